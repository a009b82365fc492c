package modalx

import (
	"context"
	"fmt"
	"sort"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/pool"
)

// Backend runs a pool's sandboxes as Modal Sandboxes. It implements pool.Backend.
type Backend struct{ c *core }

var (
	_ pool.Backend       = (*Backend)(nil)
	_ pool.ClaimRecorder = (*Backend)(nil)
)

// MarkClaimed tags a claimed sandbox as such, in the background (retried):
// List then reports it Claimed and a queue rebuilt from tags keeps it out
// of the pool. It implements pool.ClaimRecorder.
func (b *Backend) MarkClaimed(ctx context.Context, id, by string) error {
	t, ok := b.c.lookup(id)
	if ok && t.claimedBy != "" {
		return nil // Take queued it already
	}
	t.ref.ID = id
	b.c.markClaimed(t.ref, by, b.c.clk.Now())
	return nil
}

// Name is "modal".
func (b *Backend) Name() string { return "modal" }

// Close releases the Backend's share of the Modal client. Sandboxes keep running.
func (b *Backend) Close() error { b.c.release(); return nil }

// builtImage returns the workload Create starts now with its image built,
// building it on first use (and after the workload's image changed). A
// failed build is not kept, so the next Create tries again.
func (c *core) builtImage(ctx context.Context) (*modal.Image, workload, []string, error) {
	c.buildMu.Lock()
	defer c.buildMu.Unlock()
	c.workMu.Lock()
	w, cmd, img, of := c.work, c.cmd, c.image, c.imageOf
	c.workMu.Unlock()
	if img != nil && of == w.Image {
		return img, w, cmd, nil
	}
	img, err := c.client.Images.FromRegistry(w.Image, nil).Build(ctx, c.app)
	if err != nil {
		return nil, workload{}, nil, wrap(fmt.Sprintf("building image %s", w.Image), err)
	}
	c.workMu.Lock()
	c.image, c.imageOf = img, w.Image
	c.workMu.Unlock()
	return img, w, cmd, nil
}

// Create starts one sandbox that Modal kills at now+ttl (ttl rounded up to a
// whole second, as Modal counts it) and returns once its tunnel URL is known.
func (b *Backend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	c := b.c
	img, w, cmd, err := c.builtImage(ctx)
	if err != nil {
		return pool.Ref{}, err
	}
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	if ttl < time.Second {
		ttl = time.Second
	}
	// Asked-for time, before Modal starts the clock: ExpiresAt errs early, never late.
	created := b.c.clk.Now()
	// No IdleTimeout: a pooled sandbox is idle by design until claimed.
	sb, err := c.client.Sandboxes.Create(ctx, c.app, img, &modal.SandboxCreateParams{
		Command: cmd, EncryptedPorts: []int{w.Port}, Timeout: ttl})
	if err != nil {
		return pool.Ref{}, wrap(fmt.Sprintf("creating a sandbox in app %s", c.opts.App), err)
	}
	// modal-go v0.7.0 cannot tag at creation: until SetTags below, the sandbox
	// runs untagged, so List (which filters by the pool tag) cannot see it. If
	// this process dies in that window nobody adopts or terminates it, but it
	// is not leaked for long: Modal kills it at its Timeout, which is the ttl.
	fail := func(doing string, err error) (pool.Ref, error) {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = sb.Terminate(tctx, nil)
		return pool.Ref{}, wrap(doing, err)
	}
	tctx, cancel := context.WithTimeout(ctx, c.opts.TunnelTimeout)
	tunnels, err := sb.Tunnels(tctx, c.opts.TunnelTimeout)
	cancel()
	if err != nil {
		return fail("getting the tunnel of sandbox "+sb.SandboxID, err)
	}
	t := tunnels[w.Port]
	if t == nil {
		return fail("getting the tunnel of sandbox "+sb.SandboxID, fmt.Errorf("no tunnel for port %d", w.Port))
	}
	ref := pool.Ref{ID: sb.SandboxID, URL: t.URL(), CreatedAt: created, ExpiresAt: created.Add(ttl), Workload: workloadKey(w.encode())}
	if err := sb.SetTags(ctx, tagsFor(c.opts.Pool, ref, "", time.Time{})); err != nil {
		return fail("tagging sandbox "+sb.SandboxID, err)
	}
	c.remember(tagged{ref: ref})
	c.mu.Lock()
	c.handles[ref.ID] = sb // kept attached: tags and terminate need no lookup later
	c.fresh[ref.ID] = true
	c.mu.Unlock()
	return ref, nil
}

// Terminate stops a sandbox; one that is gone already is not an error.
func (b *Backend) Terminate(ctx context.Context, id string) error {
	return b.c.terminate(ctx, id)
}

func (c *core) terminate(ctx context.Context, id string) error {
	sb, err := c.handle(ctx, id)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return wrap("terminating sandbox "+id, err)
	}
	if _, err := sb.Terminate(ctx, nil); err != nil && !isNotFound(err) {
		return wrap("terminating sandbox "+id, err)
	}
	_ = sb.Detach()
	c.mu.Lock()
	delete(c.known, id)
	delete(c.handles, id)
	c.mu.Unlock()
	c.forgetListed(id)
	return nil
}

// List returns this pool's running sandboxes (claimed ones included), oldest first.
func (b *Backend) List(ctx context.Context) ([]pool.Ref, error) {
	ts, err := b.c.listTagged(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]pool.Ref, len(ts))
	for i, t := range ts {
		out[i] = t.ref
		out[i].Claimed = t.claimedBy != "" // never adopted into the pool again
	}
	return out, nil
}

func sortTagged(ts []tagged) {
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].ref.CreatedAt.Before(ts[j].ref.CreatedAt) })
}
