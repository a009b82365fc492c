package conformance_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/conformance"
)

// startFake runs a fake Modal control plane and points the SDK at it through
// the process environment: the tests using it are top-level and sequential
// (their subtests share the one fake, each on its own pool).
func startFake(t *testing.T, opts fakemodal.Options) *fakemodal.Server {
	t.Helper()
	f, err := fakemodal.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	t.Setenv("MODAL_SERVER_URL", f.URL)
	t.Setenv("MODAL_TOKEN_ID", f.TokenID)
	t.Setenv("MODAL_TOKEN_SECRET", f.TokenSecret)
	t.Setenv("MODAL_CONFIG_PATH", t.TempDir()+"/none.toml")
	return f
}

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
	f := startFake(t, fakemodal.Options{})
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
