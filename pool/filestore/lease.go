package filestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gofrs/flock"

	"github.com/sandboxpool/sandboxpool/pool"
)

// The controller lease is an exclusive flock on <pool>.lease, held for as long
// as the controller lives: the kernel drops it when the process dies, even by
// kill -9, so a lease can never go stale. <pool>.lease.holder says who holds it.

func (s *Store) leasePath() string  { return s.base + ".lease" }
func (s *Store) holderPath() string { return s.leasePath() + ".holder" }

// heldGrace is how long AcquireLease keeps trying before it believes the
// lease is held: a LeaseHolder probe elsewhere holds the lock for microseconds
// and must not make a controller refuse to start.
const heldGrace = 100 * time.Millisecond

// AcquireLease takes the pool's controller lease for holder, or returns a
// *pool.LeaseHeldError naming the current holder. Every call opens its own
// lock, so two Stores of one process exclude each other too.
func (s *Store) AcquireLease(ctx context.Context, holder pool.LeaseRecord) (pool.Lease, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	fl := flock.New(s.leasePath(), flock.SetPermissions(0o600))
	deadline := time.Now().Add(heldGrace)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ok, err := fl.TryLock()
		if err != nil {
			return nil, fmt.Errorf("lease %s: %w", fl.Path(), err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return nil, &pool.LeaseHeldError{Holder: s.readHolder()}
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
		}
	}
	if err := writeHolder(s.holderPath(), holder); err != nil {
		fl.Unlock()
		return nil, err
	}
	return &lease{fl: fl, holderPath: s.holderPath()}, nil
}

// writeHolder writes who holds the lease, atomically so a reader sees the
// old holder or the new one, never half.
func writeHolder(path string, holder pool.LeaseRecord) error {
	tmp := path + ".tmp"
	data, err := json.Marshal(holder)
	if err == nil {
		err = os.WriteFile(tmp, append(data, '\n'), 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("lease holder %s: %w", path, err)
	}
	return nil
}

// LeaseHolder says who holds the lease now, "" when nobody does.
func (s *Store) LeaseHolder(ctx context.Context) (pool.LeaseRecord, error) {
	if err := ctx.Err(); err != nil {
		return pool.LeaseRecord{}, err
	}
	// A shared probe: probes never block each other, and it is released at once.
	fl := flock.New(s.leasePath(), flock.SetPermissions(0o600))
	free, err := fl.TryRLock()
	if err != nil {
		return pool.LeaseRecord{}, fmt.Errorf("lease %s: %w", fl.Path(), err)
	}
	if free {
		return pool.LeaseRecord{}, fl.Unlock()
	}
	return s.readHolder(), nil
}

// readHolder reads who holds the locked lease; the holder may not have
// written its record yet. What cannot be read is said in Host.
func (s *Store) readHolder() pool.LeaseRecord {
	b, err := os.ReadFile(s.holderPath())
	if h := strings.TrimSpace(string(b)); err == nil && h != "" {
		var r pool.LeaseRecord
		if json.Unmarshal([]byte(h), &r) == nil && !r.IsZero() {
			return r
		}
		return pool.LeaseRecord{Host: strings.ReplaceAll(h, "\n", " ")} // an older binary's one line
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pool.LeaseRecord{Host: "unknown holder (" + err.Error() + ")"}
	}
	return pool.LeaseRecord{Host: "unknown holder (lock " + s.leasePath() + " is held)"}
}

type lease struct {
	fl         *flock.Flock
	holderPath string
	once       sync.Once
	err        error

	mu       sync.Mutex // UpdateHolder against Release: the name is the next holder's after
	released bool
}

// UpdateHolder rewrites what the holder record says (the API bound after
// the lease was taken), while the lease is held.
func (l *lease) UpdateHolder(holder pool.LeaseRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	return writeHolder(l.holderPath, holder)
}

// Release gives the lease up; later calls do nothing.
func (l *lease) Release() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.released = true
		l.mu.Unlock()
		// Remove the name while still holding the lock: afterwards it may be the next holder's.
		if err := os.Remove(l.holderPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.err = err
		}
		l.err = errors.Join(l.err, l.fl.Unlock())
	})
	return l.err
}
