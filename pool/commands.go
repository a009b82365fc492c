package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Resize sets the target and starts a pass.
func (c *Controller) Resize(ctx context.Context, n int) error {
	if err := c.cfg.ValidateSize(n); err != nil {
		return err
	}
	c.autosizeOff(fmt.Sprintf("target set to %d by hand", n))
	// The old target is read before the store is written: a store reload
	// in between (the store loop, a pass) would already show n.
	c.mu.Lock()
	old, loaded := c.target, c.loaded
	c.mu.Unlock()
	if !loaded {
		// Nothing read yet (maintain --size, a dashboard's --size at start):
		// c.target is the flag's, not the pool's ("target 3 -> 3" for 2 -> 3).
		if s, err := c.st.Load(ctx); err == nil && s.HasTarget {
			old = s.Target
		}
	}
	if err := c.st.SetTarget(ctx, n); err != nil {
		err = fmt.Errorf("set target: %w", err)
		c.report(ProblemStore, opWrite, "", err)
		return err
	}
	c.resolve(ProblemStore, opWrite)
	c.mu.Lock()
	c.target = n
	c.stored.Target, c.stored.HasTarget = n, true
	c.targetSeq = c.loadSeq
	c.mu.Unlock()
	c.emit(Event{Kind: EventResized, Message: fmt.Sprintf("target %d -> %d", old, n)})
	c.Kick()
	return nil
}

// Target is the target as last read or set.
func (c *Controller) Target() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target
}

// ErrNotFound says that no sandbox of the pool has that id.
var ErrNotFound = errors.New("no such sandbox in the pool")

// Terminate stops one sandbox of the pool: pooled, claimed or being
// created, as asked by a user ("user" in its event's By).
func (c *Controller) Terminate(ctx context.Context, id string) error {
	return c.TerminateAs(ctx, id, ByUser)
}

// TerminateAs is Terminate on behalf of by ("dashboard", "api 127.0.0.1:5555", "cli").
func (c *Controller) TerminateAs(ctx context.Context, id, by string) error {
	c.mu.Lock()
	for _, cr := range c.inflight {
		if cr.key == id || cr.ref.ID == id {
			cr.cancelled = true
			cr.cancel()
			c.mu.Unlock()
			return nil
		}
	}
	c.mu.Unlock()
	removed, err := c.st.Remove(ctx, id)
	if err != nil {
		err = fmt.Errorf("remove %s from the store: %w", id, err)
		c.report(ProblemStore, opWrite, id, err)
		return err
	}
	if len(removed) == 0 {
		live, lerr := c.be.List(ctx)
		if lerr != nil {
			return fmt.Errorf("list sandboxes: %w", lerr)
		}
		if !slices.ContainsFunc(live, func(r Ref) bool { return r.ID == id }) {
			return fmt.Errorf("%s: %w %q", id, ErrNotFound, c.cfg.Pool)
		}
		removed = []Entry{{Ref: Ref{ID: id}}}
	}
	c.forget(removed[0].ID)
	err = c.terminate(ctx, removed[0], ReasonUser, by)
	c.Kick()
	return err
}

// TerminateAll tears the pool down: the target becomes 0 (so no controller
// refills it), creations in flight are cancelled, and every sandbox of the
// pool, claimed ones included, is terminated. It returns how many it stopped.
func (c *Controller) TerminateAll(ctx context.Context) (int, error) {
	if err := c.st.SetTarget(ctx, 0); err != nil {
		return 0, fmt.Errorf("set target 0: %w", err)
	}
	c.mu.Lock()
	c.target = 0
	c.stored.Target, c.stored.HasTarget = 0, true
	c.targetSeq = c.loadSeq
	c.mu.Unlock()
	return c.terminateEverything(ctx, ReasonUser, ByUser)
}

// Cleanup terminates every sandbox of the pool but keeps the target: what
// --cleanup does on quit.
func (c *Controller) Cleanup(ctx context.Context) (int, error) {
	return c.terminateEverything(ctx, ReasonCleanup, ByController)
}

func (c *Controller) terminateEverything(ctx context.Context, reason, by string) (int, error) {
	c.mu.Lock()
	for _, cr := range c.inflight {
		cr.cancelled = true
		cr.cancel()
	}
	c.mu.Unlock()
	s, err := c.st.Load(ctx)
	if err != nil {
		return 0, err
	}
	ids := make([]string, 0, len(s.Entries))
	byID := map[string]Entry{}
	for _, e := range s.Entries {
		ids = append(ids, e.ID)
		byID[e.ID] = e
	}
	if _, err := c.st.Remove(ctx, ids...); err != nil {
		return 0, err
	}
	// A claim record still on its way would find its sandbox gone (and say so).
	if err := c.records.wait(ctx); err != nil {
		return 0, err
	}
	live, err := c.be.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list sandboxes: %w", err)
	}
	for _, r := range live {
		if _, ok := byID[r.ID]; !ok {
			byID[r.ID] = Entry{Ref: r}
		}
	}
	c.waitCreations(ctx)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, e := range byID {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := c.terminate(ctx, e, reason, by); err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.refreshStore(ctx)
	return len(byID), firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// waitCreations waits (bounded by ctx) until no creation is in flight.
func (c *Controller) waitCreations(ctx context.Context) {
	for {
		changed := c.changeSignal() // taken first: an end in between wakes us
		if c.creating.Load() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// WaitIdle waits until no creation is in flight and the backend's records
// of the claims made so far are made (for one-shot commands).
func (c *Controller) WaitIdle(ctx context.Context) {
	c.waitCreations(ctx)
	_ = c.records.wait(ctx)
}

// forget drops what memory holds of a sandbox that left the pool.
func (c *Controller) forget(id string) {
	c.mu.Lock()
	c.wroteLocked(Entry{Ref: Ref{ID: id}}, true)
	c.dropHealthLocked(id)
	c.roll.forgetLocked(id)
	c.mu.Unlock()
}

// terminate asks the backend to stop a sandbox that is already out of the
// store, and accounts for it; its event says why (reason) and who asked (by).
func (c *Controller) terminate(ctx context.Context, e Entry, reason, by string) error {
	now := c.clk.Now()
	c.mu.Lock()
	c.doomed[e.ID] = now
	if _, done := c.finished[e.ID]; done && reason != ReasonOrphan && reason != ReasonUser && reason != ReasonCleanup {
		// Terminated by this process already, and back in a store since (a
		// Modal queue rebuilt from tags Modal still listed): its end was
		// said and counted once. The call again is harmless and makes sure.
		c.mu.Unlock()
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), terminateTimeout)
		defer cancel()
		// As a pool's termination: one a claim holds since stays its.
		if err := c.backendTerminate(tctx, e, reason); err != nil && !errors.Is(err, ErrAlreadyClaimed) && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("terminate %s: %w", e.ID, err)
		}
		c.emit(Event{Kind: EventStoreChanged, SandboxID: e.ID, Message: e.ID + " had ended already (terminated by this controller): out of the pool"})
		return nil
	}
	if c.killing[e.ID] {
		// Already on its way out (a pass met it still listed): one call,
		// one count, one event.
		c.mu.Unlock()
		return nil
	}
	c.killing[e.ID] = true
	c.recent[e.ID] = Sandbox{ID: e.ID, URL: e.URL, State: StateTerminating, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt}
	// A sandbox that never got ready (failed, cancelled) was no waste of
	// the pool's, nor a loss that explains a replacement.
	unready := reason == ReasonFailed || reason == ReasonCancelled
	if !e.Claimed() && !e.CreatedAt.IsZero() && !unready {
		c.stats.WasteSeconds += now.Sub(e.CreatedAt).Seconds()
	}
	if !e.Claimed() && reason != ReasonExpired && !unready && reason != ReasonOrphan {
		c.budget.lose(now) // a pooled sandbox gone early explains its replacement
	}
	c.mu.Unlock()
	// A terminate must finish even when the caller's ctx is gone (shutdown),
	// or the sandbox would be out of the store but alive.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), terminateTimeout)
	defer cancel()
	err := c.backendTerminate(tctx, e, reason)
	c.mu.Lock()
	delete(c.killing, e.ID)
	delete(c.recent, e.ID)
	switch {
	case errors.Is(err, ErrAlreadyClaimed):
		c.mu.Unlock()
		c.emit(Event{Kind: EventStoreChanged, SandboxID: e.ID,
			Message: e.ID + " is claimed (the backend says so): left running, out of the pool"})
		return nil
	case errors.Is(err, ErrNotFound):
		// A stale store's entry (an old copy put back) of a sandbox that
		// had ended: the pool terminated nothing.
		c.mu.Unlock()
		c.emit(Event{Kind: EventStoreChanged, SandboxID: e.ID, Message: e.ID + " had ended already: out of the pool"})
		return nil
	}
	if err == nil {
		c.terminations[reason]++
		c.finished[e.ID] = c.clk.Now()
	}
	c.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("terminate %s: %w", e.ID, err)
		c.report(ProblemBackend, opTerminate, e.ID, err)
		return err
	}
	c.resolve(ProblemBackend, opTerminate)
	c.emit(Event{Kind: EventTerminated, SandboxID: e.ID, Reason: reason, By: by})
	return nil
}

// backendTerminate asks the backend to stop e: as the pool's (never a
// sandbox a claim holds) unless e is claimed or someone asked for it.
func (c *Controller) backendTerminate(ctx context.Context, e Entry, reason string) error {
	if pt, ok := c.be.(PooledTerminator); ok && !e.Claimed() && reason != ReasonUser && reason != ReasonCleanup {
		return pt.TerminatePooled(ctx, e.ID)
	}
	return c.be.Terminate(ctx, e.ID)
}

// terminateTimeout bounds one Terminate call.
const terminateTimeout = 30 * time.Second

// terminateAsync terminates in the background, owned by the controller.
func (c *Controller) terminateAsync(e Entry, reason, by string) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.terminate(c.life, e, reason, by)
	}()
}
