package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// Claimers of the Modal chaos storm besides the CLI processes: clients of
// the controller's API, and a claimer of the queue that follows the README's
// Python protocol, written here in Go on the SDK alone (no modalx), as a
// service in another language would. Every claim they get is recorded with
// the CLI's, so checkPromises sees a sandbox handed to two claimers of any
// kind.

const (
	claimerAPI    = 100 // chaosClaim.by of API claimers: 100, 101, ...
	claimerPython = 200
)

// startAPIClaimers runs n goroutines claiming through POST /v1/claims while
// a controller serves; what they get runs out its ttl.
func (r *chaosRun) startAPIClaimers(ctx context.Context, n int) {
	for i := range n {
		r.claimWG.Add(1)
		go func() {
			defer r.claimWG.Done()
			crng := rand.New(rand.NewPCG(r.seed, uint64(claimerAPI+i)))
			cl := http.Client{Timeout: 10 * time.Second}
			for ctx.Err() == nil {
				if _, up := r.ctl.up(); up && !r.quiet() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+r.ctl.addr+"/v1/claims?timeout=3s", nil)
					if resp, err := cl.Do(req); err == nil {
						var c httpapi.ClaimView
						if resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&c) == nil && c.ID != "" {
							r.record(claimerAPI+i, c.ID, c.ExpiresAt)
						} else if resp.StatusCode != http.StatusOK {
							r.mu.Lock()
							r.claimErrs[fmt.Sprintf("api %d", resp.StatusCode)]++
							r.mu.Unlock()
						}
						resp.Body.Close()
					}
				}
				sleepCtx(ctx, 200*time.Millisecond+time.Duration(crng.Int64N(int64(600*time.Millisecond))))
			}
		}()
	}
}

func (r *chaosRun) quiet() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().Before(r.quietUntil)
}

func (r *chaosRun) record(by int, id string, expires time.Time) {
	r.mu.Lock()
	r.claims = append(r.claims, chaosClaim{by: by, id: id, at: time.Now()})
	if _, ok := r.claimedAt[id]; !ok {
		r.claimedAt[id] = time.Now()
	}
	if !expires.IsZero() {
		r.expires[id] = expires
	}
	r.mu.Unlock()
}

// startPythonClaimer claims straight from the pool's queue by the README's
// protocol until ctx ends.
func (r *chaosRun) startPythonClaimer(ctx context.Context, t *testing.T, f *fakemodal.Server, poolName string, use time.Duration) {
	for _, kv := range f.Env() { // the SDK in this process reads the fake's address
		k, v, _ := cut(kv)
		t.Setenv(k, v)
	}
	t.Setenv("MODAL_CONFIG_PATH", t.TempDir()+"/none.toml")
	client, err := modal.NewClientWithOptions(&modal.ClientParams{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := client.Queues.FromName(ctx, modalx.QueueName(poolName), &modal.QueueFromNameParams{CreateIfMissing: true})
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	r.claimWG.Add(1)
	go func() {
		defer r.claimWG.Done()
		defer client.Close()
		for ctx.Err() == nil {
			if !r.quiet() {
				id, exp, err := pyClaim(ctx, client, q, poolName, use, "python")
				switch {
				case err != nil:
					// Not a claim: its record was not written (a claim cut
					// short at the storm's end fails so too).
					if ctx.Err() == nil {
						r.mu.Lock()
						r.claimErrs["python: "+errWords(err.Error())]++
						r.mu.Unlock()
					}
				case id != "":
					r.record(claimerPython, id, exp)
				}
			}
			sleepCtx(ctx, 300*time.Millisecond)
		}
	}()
}

func cut(kv string) (string, string, bool) {
	for i := range kv {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

type pyRef struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	ClaimedBy string    `json:"claimed_by,omitempty"`
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
}

// pyClaim is README's claim(): the pool partition, oldest first; a bid on
// c-<id> decides; the claim record in log-<expiry day>; the tags.
func pyClaim(ctx context.Context, client *modal.Client, q *modal.Queue, poolName string, use time.Duration, by string) (string, time.Time, error) {
	bid := func(sid, op string) (bool, error) {
		nonce := fmt.Sprintf("%x", time.Now().UnixNano())
		me, _ := json.Marshal(map[string]string{"op": op, "by": by, "nonce": nonce, "at": time.Now().UTC().Format(time.RFC3339Nano)})
		if err := q.Put(ctx, string(me), &modal.QueuePutParams{Partition: "c-" + sid}); err != nil {
			return false, err
		}
		for v, err := range q.Iterate(ctx, &modal.QueueIterateParams{Partition: "c-" + sid}) {
			if err != nil {
				return false, err
			}
			var first struct {
				Nonce string `json:"nonce"`
			}
			s, _ := v.(string)
			_ = json.Unmarshal([]byte(s), &first)
			return first.Nonce == nonce, nil
		}
		return false, nil
	}
	wait := time.Second
	for {
		raw, err := q.Get(ctx, &modal.QueueGetParams{Timeout: &wait})
		var empty modal.QueueEmptyError
		if errors.As(err, &empty) {
			return "", time.Time{}, nil
		}
		if err != nil {
			return "", time.Time{}, err
		}
		var ref pyRef
		if s, ok := raw.(string); !ok || json.Unmarshal([]byte(s), &ref) != nil || ref.ID == "" {
			continue
		}
		if ref.ExpiresAt.Before(time.Now().Add(use)) {
			if won, err := bid(ref.ID, "drop"); err != nil {
				return "", time.Time{}, err
			} else if won {
				if sb, err := client.Sandboxes.FromID(ctx, ref.ID); err == nil {
					_, _ = sb.Terminate(ctx, nil)
				}
			}
			continue
		}
		won, err := bid(ref.ID, "claim")
		if err != nil {
			return "", time.Time{}, err
		}
		if !won {
			continue
		}
		now := time.Now().UTC()
		entry := ref
		entry.ClaimedBy, entry.ClaimedAt = by, now
		rec, _ := json.Marshal(map[string]any{"op": "claim", "entry": entry})
		if err := q.Put(ctx, string(rec), &modal.QueuePutParams{Partition: "log-" + ref.ExpiresAt.UTC().Format("20060102")}); err != nil {
			return ref.ID, ref.ExpiresAt, err
		}
		// README's claim() raises when the tags cannot be set: no URL, no
		// claim for its caller (ignoring the error here counted a claim cut
		// short at the storm's end, untagged, whose bid a cleared queue then
		// lost: "claimed, then back in the pool").
		sb, err := client.Sandboxes.FromID(ctx, ref.ID)
		if err != nil {
			return "", time.Time{}, err
		}
		if err := sb.SetTags(ctx, map[string]string{modalx.TagPool: poolName, modalx.TagURL: ref.URL,
			modalx.TagCreatedAt: ref.CreatedAt.Format(time.RFC3339Nano), modalx.TagExpiresAt: ref.ExpiresAt.Format(time.RFC3339Nano),
			modalx.TagClaimedBy: by, modalx.TagClaimedAt: now.Format(time.RFC3339Nano)}); err != nil {
			return "", time.Time{}, err
		}
		return ref.ID, ref.ExpiresAt, nil
	}
}
