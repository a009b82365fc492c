// Package filestore is the local pool store (SPEC Backends: local): one file
// per pool, a snapshot followed by an append-only log (codec.go), shared by
// every process of the pool, every method one transaction under a
// cross-process file lock.
//
// A change appends its records and flushes them with one fdatasync, shared
// by every change this process queued meanwhile (group commit): no new file,
// no rename, no directory sync. A put (a new sandbox) and a take (a claim)
// are flushed after their caller has its answer, within flushDelay (1 s, see
// change.lazy): one fdatasync in the background for all of that spell.
// When the log outgrows the snapshot, a compaction in the background
// rewrites the file (temp file, fsync, rename, fsync directory), dropping
// claimed entries whose sandbox has expired.
// Claimed entries are kept apart from the pool in memory and a Store reads
// only what other processes appended since it last looked, so a claim costs
// the same however many claimed entries the pool holds. A take may also be
// served from memory, its record written after the claimer's gate decided
// and answered (TakeQuick, quick.go).
//
// Files under the directory, for pool P: P.json (the store), P.json.tmp (a
// compaction's next file, left only by a crash), P.lock (taken by every
// transaction), P.lease and P.lease.holder (the controller lease, lease.go).
package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gofrs/flock"

	"github.com/sandboxpool/sandboxpool/pool"
)

// A log is compacted once it is this long and half the snapshot's size:
// rarely, and a reader that starts cold never replays much. Tests lower it.
var compactMin int64 = 64 << 10

const (
	// compactRetry spaces compactions after one failed (a full disk, a
	// directory that refuses new files): appending still works meanwhile.
	compactRetry = 10 * time.Second
	// expiredGrace: a claimed entry is dropped at compaction this long after
	// its sandbox expired (the backend killed it then), whatever the clocks.
	expiredGrace = time.Minute
	// tailLen bytes before the end of what a Store read are compared before
	// it reads only what was appended since.
	tailLen = 64
)

// Store is the local store of one pool. It is safe for concurrent use, and
// any number of Stores, in this process or others, may share one file.
type Store struct {
	dir, base, path, tmp string

	dirf     *os.File // kept open to fsync renames without reopening it
	lockPath string   // <pool>.lock, taken by every transaction
	// lockf is this Store's descriptor of the lock file, opened once and
	// owned by the holder of sem: opening it per transaction cost a third
	// of an uncontended claim. held is the one waitLock opened instead,
	// when the lock had to be waited for.
	lockf     *os.File
	lockfHeld bool
	held      *flock.Flock

	// sem serialises this Store's transactions: a *flock.Flock is one open
	// file description, so it cannot exclude its own concurrent users.
	sem    chan struct{}
	closed atomic.Bool

	// Owned by the holder of sem: the file as this Store last read or wrote it.
	f     *os.File    // nil when there is none, or it must be reopened
	fi    os.FileInfo // f's identity and modification time then
	lay   layout
	tail  []byte   // up to tailLen bytes before lay.end
	st    *state   // nil: read the file in full next time
	carry settings // the last settings seen, for a file that vanished
	roErr error    // why f is open read-only: every write returns it
	rbuf  bytes.Buffer
	wbuf  bytes.Buffer // this batch's records
	cbuf  bytes.Buffer // a compaction's snapshot
	logw  *logWriter   // encodes into wbuf

	compactAfter time.Time // no compaction before, after one failed
	gen          uint64    // counts the changes this Store has seen (Generation)
	epoch        uint64    // counts the times the file was found gone or gone back (pool.Stored.Epoch)
	epochWhy     string    // what happened then (pool.Stored.EpochWhy)
	// seqKnown: st.seq is the file's, as this Store last read or wrote it
	// (not a lost file's carried on): a file read whole with a lower one
	// went back in time.
	seqKnown  bool
	fullReads int // for tests: how often the whole file was read
	appends   int // for tests: how many appends
	flushes   int // for tests: how many fdatasyncs of appends

	noSync bool             // benchmarks only: measure everything but the disk flush
	now    func() time.Time // for expiry at compaction

	// Takes served from memory whose record is not written yet (quick.go);
	// owned by the holder of sem.
	pending []*quickTake
	// A change to write the takes recorded soon is due (recordSoon).
	rmu         sync.Mutex
	recordTimer *time.Timer // guarded by rmu
	closing     atomic.Bool

	// Changes queued for the next group commit (see commit).
	qmu     sync.Mutex
	queue   []*change
	leading bool

	compacting atomic.Bool
	bg         sync.WaitGroup // the background compaction and flusher

	// The background flusher of lazy changes (flushSoon).
	dirty      atomic.Pointer[os.File] // appended to since its last flush
	flushing   atomic.Bool
	flushTimer *time.Timer  // the last one flushSoon set (owned by the holder of sem)
	bgFlushes  atomic.Int64 // for tests
}

var (
	_ pool.Store  = (*Store)(nil)
	_ pool.Leaser = (*Store)(nil)
)

// Open returns the store of pool under dir, creating dir (0700) if missing.
// Nothing is read yet: a missing file is an empty pool with no target.
func Open(dir, poolName string) (*Store, error) {
	if err := pool.ValidatePoolName(poolName); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	dirf, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	base := filepath.Join(dir, poolName)
	s := &Store{
		dir:      dir,
		base:     base,
		path:     base + ".json",
		tmp:      base + ".json.tmp",
		dirf:     dirf,
		lockPath: base + ".lock",
		sem:      make(chan struct{}, 1),
		now:      time.Now,
	}
	s.logw = newLogWriter(&s.wbuf)
	return s, nil
}

// Path is the pool's store file.
func (s *Store) Path() string { return s.path }

// Close releases the store, after the running transaction and compaction.
// Leases taken from it are released separately.
func (s *Store) Close() error {
	if s.closing.Swap(true) {
		return nil
	}
	// Takes recorded soon are written now, not after their delay: once
	// closed, no change is.
	s.stopRecordSoon()
	s.writeWon()
	s.closed.Store(true)
	s.sem <- struct{}{} // a running transaction may start a compaction or a flush: let it
	t := s.flushTimer
	<-s.sem
	if t != nil && t.Stop() {
		s.flushDirty() // now, not after its delay
	}
	s.bg.Wait()
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	s.closeFile()
	var err error
	if s.lockf != nil {
		err = s.lockf.Close()
	}
	return errors.Join(err, s.dirf.Close())
}

var errClosed = errors.New("filestore: store is closed")

// begin starts a transaction: this Store's turn, then the file lock.
// Shared is for reads; writers take it exclusively.
func (s *Store) begin(ctx context.Context, shared bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.closed.Load() {
		<-s.sem
		return errClosed
	}
	ok, err := s.tryLock(shared)
	if ok {
		s.lockfHeld = true
		return nil
	}
	if shared && errors.Is(err, syscall.EROFS) {
		// No lock file on a read-only file system: nobody can write there
		// either, so a read needs no lock.
		return nil
	}
	if err == nil {
		s.held, err = waitLock(ctx, s.lockPath, shared)
	}
	if err != nil {
		<-s.sem
		return fmt.Errorf("lock %s: %w", s.lockPath, err)
	}
	return nil
}

func (s *Store) end() {
	switch {
	case s.lockfHeld:
		if unlock(s.lockf) != nil {
			// Closing the descriptor drops the lock whatever happened.
			s.lockf.Close()
			s.lockf = nil
		}
		s.lockfHeld = false
	case s.held != nil:
		_ = s.held.Unlock() // it closes the descriptor, which drops the lock even if unlocking failed
		s.held = nil
	}
	<-s.sem
}

// tryLock takes the lock on this Store's descriptor if it is free.
func (s *Store) tryLock(shared bool) (bool, error) {
	if s.lockf == nil {
		// Read-only is enough for flock, and opens on a read-only file system.
		f, err := os.OpenFile(s.lockPath, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return false, err
		}
		s.lockf = f
	}
	return tryFlock(s.lockf, shared)
}

// waitLock blocks in the kernel rather than polling: the kernel wakes waiters
// at each release, so under contention every process gets its turn (pollers
// starve against a process that takes the lock back to back). flock(2) cannot
// be interrupted, so the wait runs on a fresh descriptor in a goroutine that,
// if ctx ends first, releases the lock as soon as it gets it.
func waitLock(ctx context.Context, path string, shared bool) (*flock.Flock, error) {
	fl := flock.New(path, flock.SetPermissions(0o600))
	got := make(chan error)
	abandoned := make(chan struct{})
	go func() {
		var err error
		if shared {
			err = fl.RLock()
		} else {
			err = fl.Lock()
		}
		select {
		case got <- err:
		case <-abandoned:
			fl.Unlock()
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return nil, err
		}
		return fl, nil
	case <-ctx.Done():
		close(abandoned)
		return nil, ctx.Err()
	}
}

// refresh brings s.st up to date with the file, with the takes pending
// laid over it; it must run inside a transaction. An unchanged file costs
// one stat; a file others appended to costs reading what they appended.
func (s *Store) refresh() error {
	err := s.refreshFile()
	if err == nil && len(s.pending) > 0 {
		s.reapplyLocked()
	}
	return err
}

func (s *Store) refreshFile() error {
	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.lost()
		return nil
	case err != nil:
		return fmt.Errorf("read store: %w", err)
	}
	if s.f != nil && s.st != nil && os.SameFile(fi, s.fi) {
		if fi.Size() == s.lay.size && fi.ModTime().Equal(s.fi.ModTime()) {
			return nil
		}
		if fi.Size() > s.lay.end && s.sameTail() && s.readLog(fi) == nil {
			return nil
		}
	}
	// A new file (a compaction, or one put in place by hand), or one changed
	// other than by appending: read it all.
	return s.readAll()
}

// lost forgets a file that was moved away or deleted: the next write starts
// a new one at the path (never writing to the moved one) with the settings
// last seen, so the pool's timing and target survive; its entries are gone.
func (s *Store) lost() {
	if s.f == nil && s.st != nil {
		return // already so
	}
	s.closeFile()
	s.st = newState(s.carry)
	s.gen++
	s.epoch++
	s.epochWhy = s.path + " was moved away or deleted (a new one is started with the pool's target and timing)"
	s.seqKnown = false
	s.lay = layout{}
	s.tail = nil
}

func (s *Store) readAll() error {
	var before uint64 // the history this Store knew, if it did
	known := s.st != nil && s.seqKnown
	if known {
		before = s.st.seq
	}
	s.closeFile()
	s.st = nil
	s.seqKnown = false
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	var roErr error
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// A read-only file or file system can still be read; writes say why not.
		if rf, rerr := os.Open(s.path); rerr == nil {
			f, roErr, err = rf, err, nil
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		s.lost()
		return nil
	}
	if err != nil {
		return fmt.Errorf("read store: %w", err)
	}
	fi, err := f.Stat()
	if err == nil {
		s.rbuf.Reset()
		_, err = s.rbuf.ReadFrom(f)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("read store %s: %w", s.path, err)
	}
	s.fullReads++
	data := s.rbuf.Bytes()
	st, lay, err := decode(data)
	if err != nil {
		f.Close()
		if newer, ok := err.(newerError); ok {
			newer.path = s.path
			return newer
		}
		what := strings.ReplaceAll(err.Error(), "\n", " ")
		return fmt.Errorf("%s: %w: %s (left untouched: fix or move it away)", s.path, ErrCorrupt, what)
	}
	s.f, s.fi, s.st, s.lay, s.roErr = f, fi, st, lay, roErr
	s.seqKnown = true
	if known && st.seq < before {
		// Its entries went missing without anyone removing them, as a lost file's.
		s.epoch++
		s.epochWhy = fmt.Sprintf("%s went back in time (an older copy was put back: %d changes of its history, %d before)", s.path, st.seq, before)
	}
	s.gen++
	s.tail = nil
	s.grew(data[:lay.end])
	s.carry = st.settings
	return nil
}

// readLog applies what others appended since this Store last looked.
func (s *Store) readLog(fi os.FileInfo) error {
	n := int(fi.Size() - s.lay.end)
	s.rbuf.Reset()
	s.rbuf.Grow(n)
	buf := s.rbuf.AvailableBuffer()[:n]
	m, err := s.f.ReadAt(buf, s.lay.end)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	buf = buf[:m]
	done, err := s.st.replay(buf, s.lay.end)
	if err != nil {
		s.st = nil // half applied; readAll reports it
		return err
	}
	if done > 0 {
		s.gen++
	}
	s.grew(buf[:done])
	s.carry = s.st.settings
	s.lay.end += done
	s.lay.size = s.lay.end + int64(m) - done
	s.fi = fi
	return nil
}

// grew notes that data now ends at lay.end.
func (s *Store) grew(data []byte) {
	if len(data) >= tailLen {
		s.tail = append(s.tail[:0], data[len(data)-tailLen:]...)
		return
	}
	s.tail = append(s.tail, data...)
	if len(s.tail) > tailLen {
		s.tail = append(s.tail[:0], s.tail[len(s.tail)-tailLen:]...)
	}
}

// sameTail reports whether the file still holds what this Store read last
// just before lay.end: then a longer file was appended to, not rewritten.
func (s *Store) sameTail() bool {
	var b [tailLen]byte
	got := b[:len(s.tail)]
	n, _ := s.f.ReadAt(got, s.lay.end-int64(len(got)))
	return n == len(got) && bytes.Equal(got, s.tail)
}

func (s *Store) closeFile() {
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.fi, s.roErr = nil, nil, nil
}

// invalidate makes the next transaction read the file afresh, after a
// write whose outcome on disk is unknown.
func (s *Store) invalidate() {
	s.closeFile()
	s.st = nil
}

// appendLocked adds records to the file and flushes them; it runs inside an
// exclusive transaction, after the records were applied to s.st.
func (s *Store) appendLocked(recs []byte, flush bool) error {
	if s.f == nil || !s.lay.appendable {
		// No file yet (or it vanished), or one to upgrade: write it whole.
		return s.compactLocked()
	}
	if err := s.roErr; err != nil {
		s.invalidate()
		return fmt.Errorf("write store: %w", err)
	}
	if s.lay.size > s.lay.end {
		// A writer died mid-append: cut its torn line away, or this append would continue it.
		if err := s.f.Truncate(s.lay.end); err != nil {
			s.invalidate()
			return fmt.Errorf("write store: %w", err)
		}
		s.lay.size = s.lay.end
	}
	_, err := s.f.WriteAt(recs, s.lay.end)
	switch {
	case err != nil || s.noSync:
	case flush:
		err = datasync(s.f)
		s.flushes++
	default:
		s.flushSoon(s.f)
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = s.f.Stat()
	}
	if err != nil {
		// Nothing of it may count: a claim that fails is handed out to nobody.
		_ = s.f.Truncate(s.lay.end)
		s.invalidate()
		return fmt.Errorf("write store: %w", err)
	}
	s.appends++
	s.grew(recs)
	s.lay.end += int64(len(recs))
	s.lay.size = s.lay.end
	s.fi = fi
	return nil
}

// flushDelay: lazy changes wait this long for their flush, so that one
// fdatasync serves every change of that spell. Run at once, a flush slowed
// the next claim's append (it waits for the file's journal commit): back
// to back claims took 1.1-1.6 ms instead of 0.65-0.95. Each flush is a
// wake-up of its own (~14 context switches of the controller on the 2-core
// VM, half of them the Go runtime's sysmon polling while the fdatasync
// holds a P): at 100 ms, claims 300 ms apart each paid a flush of theirs,
// a quarter of their switches. What waits is only a machine crash's loss,
// which names sandboxes that crash killed (see change.lazy). Tests lengthen it.
var flushDelay = time.Second

// flushSoon has f flushed in the background within flushDelay: one
// fdatasync for every lazy change appended meanwhile (group commit), after
// their callers' answers. It runs while the caller holds sem, so that Close
// cannot miss it (Close cuts the delay short). A timer, not a goroutine
// waiting on one: starting a goroutine wakes another thread, on a claim's
// way to its answer. A failed flush leaves the data in the page cache
// (kill -9 loses nothing); a disk that fails it fails the next write too,
// which is reported.
func (s *Store) flushSoon(f *os.File) {
	s.dirty.Store(f)
	if !s.flushing.CompareAndSwap(false, true) {
		return
	}
	s.bg.Add(1)
	s.flushTimer = time.AfterFunc(flushDelay, s.flushDirty)
}

// flushDirty is the flush flushSoon set up.
func (s *Store) flushDirty() {
	defer s.bg.Done()
	for {
		for f := s.dirty.Swap(nil); f != nil; f = s.dirty.Swap(nil) {
			_ = datasync(f)
			s.bgFlushes.Add(1)
		}
		s.flushing.Store(false)
		// A change may have handed a file over after the Swap and seen
		// flushing still true: take it unless another flusher did.
		if s.dirty.Load() == nil || !s.flushing.CompareAndSwap(false, true) {
			return
		}
	}
}

// compactDue reports whether the log has grown enough to be folded into the snapshot.
func (s *Store) compactDue() bool {
	n := s.lay.end - s.lay.snapEnd
	return s.f != nil && n >= compactMin && n >= s.lay.snapEnd/2
}

// compactLocked rewrites the file from s.st: the snapshot alone, without the
// claimed entries whose sandbox has expired. It runs inside an exclusive
// transaction.
func (s *Store) compactLocked() error {
	if err := s.roErr; err != nil {
		s.invalidate()
		return fmt.Errorf("write store: %w", err)
	}
	cutoff := s.now().Add(-expiredGrace)
	expired := func(e pool.Entry) bool { return !e.ExpiresAt.IsZero() && e.ExpiresAt.Before(cutoff) }
	if err := encodeSnapshot(&s.cbuf, s.st, expired); err != nil {
		s.invalidate()
		return fmt.Errorf("encode store %s: %w", s.path, err)
	}
	data := s.cbuf.Bytes()
	f, err := os.OpenFile(s.tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		s.invalidate()
		return fmt.Errorf("write store: %w", err)
	}
	_, err = f.Write(data)
	if err == nil && !s.noSync {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(s.tmp, s.path)
	}
	if err == nil && !s.noSync {
		// The rename is durable only once the directory is.
		if err = s.dirf.Sync(); err != nil {
			err = fmt.Errorf("sync directory %s: %w", s.dir, err)
		}
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if err != nil {
		f.Close()
		s.invalidate()
		return fmt.Errorf("write store: %w", err)
	}
	s.closeFile()
	s.st.squeeze(func(e pool.Entry) bool { return !expired(e) })
	s.gen++
	// The takes pending that s.st held claimed are in the file now.
	var in []*quickTake
	for _, q := range s.pending {
		if q.applied {
			in = append(in, q)
		}
	}
	s.recordedLocked(in)
	s.f, s.fi = f, fi
	n := int64(len(data))
	s.lay = layout{version: fileVersion, snapEnd: n, end: n, size: n, appendable: true}
	s.tail = nil
	s.grew(data)
	s.carry = s.st.settings
	return nil
}

// compactSoon starts a compaction in the background, off the claim that
// made the log long enough. It runs while the caller holds sem, so that
// Close cannot miss it.
func (s *Store) compactSoon() {
	if s.now().Before(s.compactAfter) || !s.compacting.CompareAndSwap(false, true) {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		defer s.compacting.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if s.begin(ctx, false) != nil {
			return
		}
		defer s.end()
		if s.refresh() == nil && s.compactDue() {
			if s.compactLocked() != nil {
				s.compactAfter = s.now().Add(compactRetry)
			}
		}
	}()
}

// change is one queued write: apply edits the state and logs what it did.
type change struct {
	apply func(st *state, w *logWriter)
	// lazy: the change is flushed after its caller has its answer, by the
	// background flusher (flushSoon), not before. Puts and takes: this store
	// serves only the local backend, whose sandboxes are processes of this
	// machine, so what a machine crash can lose from the page cache (a new
	// sandbox, a claim) names a sandbox that crash killed anyway; and kill -9
	// of any process loses nothing it wrote, so a claim that returned is
	// never handed out again. Without the flush a claim spends no ~1 ms in
	// fdatasync before its answer, and a creation none either.
	lazy bool
	err  error
	done chan struct{}
	lead chan struct{} // closed when this change's caller must run the next batch
}

// commit applies a change in a batch with every other change of this Store
// queued meanwhile: one lock, one append and one fdatasync for all of them
// (group commit), so concurrent claims do not queue behind each other's
// flushes. ctx bounds the wait for a turn; a change already in a batch is
// seen through whatever ctx says (a claim made must not be lost).
func (s *Store) commit(ctx context.Context, lazy bool, apply func(*state, *logWriter)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &change{apply: apply, lazy: lazy, done: make(chan struct{}), lead: make(chan struct{})}
	s.qmu.Lock()
	s.queue = append(s.queue, c)
	leader := !s.leading
	s.leading = true
	s.qmu.Unlock()
	if !leader {
		select {
		case <-c.done:
			return c.err
		case <-c.lead:
		case <-ctx.Done():
			if s.withdraw(c) {
				return ctx.Err()
			}
			<-c.done
			return c.err
		}
	}
	s.runBatch(ctx, c)
	<-c.done
	return c.err
}

// withdraw takes c out of the queue unless a batch has taken it, handing the
// lead on if c had just been given it.
func (s *Store) withdraw(c *change) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	i := slices.Index(s.queue, c)
	if i < 0 {
		return false
	}
	s.queue = slices.Delete(s.queue, i, i+1)
	select {
	case <-c.lead:
		s.passLeadLocked()
	default:
	}
	return true
}

func (s *Store) passLeadLocked() {
	if len(s.queue) > 0 {
		close(s.queue[0].lead)
		return
	}
	s.leading = false
}

// runBatch serves every change queued once the lock is held, me included.
func (s *Store) runBatch(ctx context.Context, me *change) {
	if err := s.begin(ctx, false); err != nil {
		s.qmu.Lock()
		failed := s.queue
		if ctx.Err() != nil {
			// Only this caller gave up: the others stay queued and one of them leads.
			i := slices.Index(s.queue, me)
			s.queue = slices.Delete(s.queue, i, i+1)
			failed = []*change{me}
		} else {
			s.queue = nil
		}
		s.passLeadLocked()
		s.qmu.Unlock()
		for _, c := range failed {
			c.err = err
			close(c.done)
		}
		return
	}
	s.qmu.Lock()
	batch := s.queue
	s.queue = nil
	s.qmu.Unlock()

	err := s.refresh()
	if err == nil {
		s.wbuf.Reset()
		flush := false
		// Takes served from memory first: they were answered before any
		// change queued now.
		pending := s.writePendingLocked(s.logw)
		for _, c := range batch {
			c.apply(s.st, s.logw)
			flush = flush || !c.lazy
		}
		// Counted before the append: a file written whole holds the count.
		s.st.seq += uint64(bytes.Count(s.wbuf.Bytes(), []byte{'\n'}))
		if s.wbuf.Len() > 0 {
			err = s.appendLocked(s.wbuf.Bytes(), flush)
		}
		if err == nil {
			s.recordedLocked(pending)
		}
	}
	if err == nil && s.wbuf.Len() > 0 {
		s.carry = s.st.settings
		s.gen++
		s.seqKnown = true
	}
	if err == nil && s.compactDue() {
		s.compactSoon()
	}
	s.end()
	for _, c := range batch {
		c.err = err
		close(c.done)
	}
	s.qmu.Lock()
	s.passLeadLocked()
	s.qmu.Unlock()
}

// Load reads the whole pool under a shared lock, so it never sees a half
// state: claimed entries first, then the pool in order.
func (s *Store) Load(ctx context.Context) (pool.Stored, error) {
	if err := s.begin(ctx, true); err != nil {
		return pool.Stored{}, err
	}
	defer s.end()
	if err := s.refresh(); err != nil {
		return pool.Stored{}, err
	}
	out := s.st.stored()
	out.Epoch, out.EpochWhy = s.epoch, s.epochWhy
	return out, nil
}

// LoadSince is Load that leaves out the claimed entries an earlier
// LoadSince of this Store returned (mark is what that call returned; 0
// leaves out none): a poll while claims go on copies the pool and the
// claims recorded since, not every claimed entry the file holds. older
// counts the claimed entries left out; when the file was rewritten
// (compacted, replaced) or its claimed entries reindexed, none are.
func (s *Store) LoadSince(ctx context.Context, mark uint64) (_ pool.Stored, older int, next uint64, _ error) {
	if err := s.begin(ctx, true); err != nil {
		return pool.Stored{}, 0, 0, err
	}
	defer s.end()
	if err := s.refresh(); err != nil {
		return pool.Stored{}, 0, 0, err
	}
	out, older, next := s.st.storedSince(mark)
	out.Epoch, out.EpochWhy = s.epoch, s.epochWhy
	return out, older, next, nil
}

// Generation returns a number that changes whenever the pool does, by any
// process's doing: a poller that sees the same number again may skip its
// Load. It costs a lock and a stat when nothing changed, however many
// entries the pool holds.
func (s *Store) Generation(ctx context.Context) (uint64, error) {
	if err := s.begin(ctx, true); err != nil {
		return 0, err
	}
	defer s.end()
	if err := s.refresh(); err != nil {
		return 0, err
	}
	return s.gen, nil
}

// Put appends ref to the pool; a recorded id changes nothing.
func (s *Store) Put(ctx context.Context, ref pool.Ref) error {
	if ref.ID == "" {
		return errors.New("filestore: put: empty sandbox id")
	}
	if !encodable(ref.CreatedAt, ref.ExpiresAt) || !utf8.ValidString(ref.ID) || !utf8.ValidString(ref.URL) {
		// JSON would change it on the way to the disk: other processes would see another entry.
		return fmt.Errorf("filestore: put %q: a time out of range or text that is not UTF-8", ref.ID)
	}
	ref.Claimed = false
	return s.commit(ctx, true, func(st *state, w *logWriter) {
		if st.has(ref.ID) {
			return
		}
		st.add(pool.Entry{Ref: ref})
		w.add(record{Op: "put", ID: ref.ID, URL: ref.URL, CreatedAt: ref.CreatedAt, ExpiresAt: ref.ExpiresAt})
	})
}

// Take drops the pooled head entries that expire before tr.MinExpiresAt
// (or skips them, leaving them pooled, with tr.KeepShort) and claims the
// first pooled one at or after it. Claimed entries are never dropped or taken.
func (s *Store) Take(ctx context.Context, tr pool.TakeRequest) (taken pool.Entry, dropped []pool.Entry, ok bool, err error) {
	if tr.ClaimedBy == "" {
		// An empty ClaimedBy would leave the entry pooled: it could be handed out again.
		return pool.Entry{}, nil, false, errors.New("filestore: take: empty claimer")
	}
	if !encodable(tr.Now) || !utf8.ValidString(tr.ClaimedBy) {
		return pool.Entry{}, nil, false, errors.New("filestore: take: claim time out of range or claimer not UTF-8")
	}
	err = s.commit(ctx, true, func(st *state, w *logWriter) {
		taken, dropped, ok = st.take(tr.MinExpiresAt, tr.ClaimedBy, tr.Now, tr.KeepShort)
		for _, d := range dropped {
			w.add(record{Op: "del", ID: d.ID})
		}
		if ok {
			w.add(record{Op: "claim", ID: taken.ID, By: tr.ClaimedBy, At: tr.Now})
		}
	})
	if err != nil {
		return pool.Entry{}, nil, false, err
	}
	return taken, dropped, ok, nil
}

// Remove deletes entries, pooled or claimed, by id.
func (s *Store) Remove(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, false, ids)
}

// Evict deletes pooled entries by id; claimed ones are left alone.
func (s *Store) Evict(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, true, ids)
}

// remove returns what it removed in Load's order.
func (s *Store) remove(ctx context.Context, pooledOnly bool, ids []string) ([]pool.Entry, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var removed []pool.Entry
	err := s.commit(ctx, false, func(st *state, w *logWriter) {
		type found struct {
			id  string
			pos int
		}
		var hits []found
		for _, id := range ids {
			pos, ok := st.claimedAt[id]
			if !ok {
				if i := st.pooledIndex(id); i >= 0 {
					pos, ok = len(st.claimed)+i, true
				}
			} else if pooledOnly {
				ok = false
			}
			if ok && !slices.ContainsFunc(hits, func(f found) bool { return f.id == id }) {
				hits = append(hits, found{id, pos})
			}
		}
		slices.SortFunc(hits, func(a, b found) int { return a.pos - b.pos })
		for _, h := range hits {
			e, _ := st.remove(h.id, pooledOnly)
			removed = append(removed, e)
			w.add(record{Op: "del", ID: h.id})
		}
	})
	if err != nil {
		return nil, err
	}
	return removed, nil
}

// SetTiming stores the pool's ttl and use-duration.
func (s *Store) SetTiming(ctx context.Context, ttl, use time.Duration) error {
	if use <= 0 || ttl <= use {
		return fmt.Errorf("filestore: timing ttl %s use-duration %s: want 0 < use-duration < ttl", ttl, use)
	}
	return s.commit(ctx, false, func(st *state, w *logWriter) {
		if st.ttl == ttl && st.use == use {
			return
		}
		st.ttl, st.use = ttl, use
		w.add(record{Op: "timing", TTL: ttl.String(), Use: use.String()})
	})
}

// SetWorkload stores what the pool's sandboxes run (pool.Stored.Workload).
func (s *Store) SetWorkload(ctx context.Context, w string) error {
	if w == "" || !utf8.ValidString(w) {
		return fmt.Errorf("filestore: workload %q: want a non-empty UTF-8 string", w)
	}
	return s.commit(ctx, false, func(st *state, w2 *logWriter) {
		if st.workload == w {
			return
		}
		st.workload = w
		w2.add(record{Op: "workload", Workload: w})
	})
}

// SetTarget stores the target n (0 or more).
func (s *Store) SetTarget(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("filestore: target %d: must be 0 or more", n)
	}
	return s.commit(ctx, false, func(st *state, w *logWriter) {
		if st.hasTarget && st.target == n {
			return
		}
		st.target, st.hasTarget = n, true
		w.add(record{Op: "target", N: &n})
	})
}
