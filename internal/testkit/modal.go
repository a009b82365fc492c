package testkit

import (
	"path/filepath"
	"testing"

	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

// FakeModal runs a fake Modal control plane on loopback, closed when the
// test ends. Child processes reach it through f.Env().
func FakeModal(t testing.TB, opts fakemodal.Options) *fakemodal.Server {
	t.Helper()
	f, err := fakemodal.Start(opts)
	if err != nil {
		t.Fatalf("start the fake Modal control plane: %v", err)
	}
	t.Cleanup(f.Close)
	return f
}

// UseFakeModal runs FakeModal and points this process's Modal SDK at it
// through the environment (no ~/.modal.toml is read). t.Setenv makes the
// test, and its callers, non-parallel.
func UseFakeModal(t testing.TB, opts fakemodal.Options) *fakemodal.Server {
	t.Helper()
	f := FakeModal(t, opts)
	t.Setenv("MODAL_SERVER_URL", f.URL)
	t.Setenv("MODAL_TOKEN_ID", f.TokenID)
	t.Setenv("MODAL_TOKEN_SECRET", f.TokenSecret)
	t.Setenv("MODAL_CONFIG_PATH", filepath.Join(t.TempDir(), "none.toml"))
	return f
}
