package conformance_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/conformance"
)

func openModal(t *testing.T, name string) (*modalx.Backend, *modalx.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, s, err := modalx.New(ctx, modalx.Options{Pool: name, LeaseHeartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); _ = s.Close() })
	return b, s
}

// TestModal runs the suite on the Modal adapter over the fake control plane.
func TestModal(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	var n atomic.Int64
	conformance.Run(t, func(t *testing.T) conformance.Env {
		name := fmt.Sprintf("conformance-%d", n.Add(1))
		b, s := openModal(t, name)
		return conformance.Env{
			Pool:    name,
			Backend: b,
			Store:   s,
			Checker: checker(t, &http.Transport{TLSClientConfig: f.TLSConfig()}),
			Kill: func(t *testing.T, id string) {
				if !f.KillServer(id) {
					t.Fatalf("the fake knows no sandbox %s", id)
				}
			},
			Reopen: func(t *testing.T) (pool.Backend, pool.Store) { return openModal(t, name) },
		}
	})
}

// The Modal RPC figures (a claim, a pass, at 3 to 1,000 sandboxes) are
// taken by TestModalFigures in modalx: go test -run TestModalFigures -v ./modalx/
