package local_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// TestListChanges: after a full list, the agent answers only the unclaimed
// sandboxes, those claimed since, and the claimed ones that ended since,
// so a pass does not carry every claimed sandbox; a cursor it cannot
// answer (zero, another agent's) gets the full list.
func TestListChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBackend(t, local.Options{})
	refs := make([]pool.Ref, 4)
	for i := range refs {
		refs[i] = mustCreate(t, b, time.Minute)
	}
	mark := func(r pool.Ref) {
		t.Helper()
		if err := b.MarkClaimed(ctx, r.ID, "test"); err != nil {
			t.Fatal(err)
		}
	}
	changes := func(since pool.ListCursor) pool.Listing {
		t.Helper()
		l, err := b.ListChanges(ctx, since)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(l.Ended)
		return l
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	mark(refs[0])
	mark(refs[1])

	full := changes(pool.ListCursor{})
	if !full.Full || !slices.Equal(ids(full.Refs), ids(refs)) || full.Next == (pool.ListCursor{}) {
		t.Fatalf("zero cursor: %+v, want every sandbox, full, and a cursor", full)
	}
	// Nothing changed: the unclaimed ones only.
	l := changes(full.Next)
	if l.Full || !slices.Equal(ids(l.Refs), ids(refs[2:])) || len(l.Ended) != 0 {
		t.Fatalf("no change: %+v, want only %v", l, ids(refs[2:]))
	}
	// A claim, a claimed one killed, a claimed one terminated, a pooled one
	// terminated: the new claim is listed claimed, the two claimed ones
	// ended, the pooled one simply gone.
	mark(refs[2])
	if err := b.Kill(ctx, refs[0].ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{refs[1].ID, refs[3].ID} {
		if err := b.Terminate(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	next := changes(l.Next)
	if next.Full || len(next.Refs) != 1 || next.Refs[0].ID != refs[2].ID || !next.Refs[0].Claimed ||
		!slices.Equal(next.Ended, sorted(refs[0].ID, refs[1].ID)) {
		t.Fatalf("after changes: %+v, want %s claimed and %s, %s ended", next, refs[2].ID, refs[0].ID, refs[1].ID)
	}
	// The same cursor answers the same; the next one, nothing.
	if again := changes(l.Next); !slices.Equal(again.Ended, next.Ended) {
		t.Fatalf("same cursor again: %+v, want %+v", again, next)
	}
	if after := changes(next.Next); after.Full || len(after.Refs) != 0 || len(after.Ended) != 0 {
		t.Fatalf("nothing new: %+v", after)
	}
	// Another agent's cursor: the full list.
	other := next.Next
	other.Epoch++
	if l := changes(other); !l.Full || !slices.Equal(ids(l.Refs), []string{refs[2].ID}) || len(l.Ended) != 0 {
		t.Fatalf("another agent's cursor: %+v, want the full list", l)
	}
}
