package modalx

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

// checkLine asserts a one-line error with the exact text, free of the secret.
func checkLine(t *testing.T, err error, kind error, want string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if msg != want {
		t.Fatalf("error\n got: %s\nwant: %s", msg, want)
	}
	if strings.ContainsAny(msg, "\n\r") {
		t.Fatalf("not one line: %q", msg)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Fatalf("%v is not %v", err, kind)
	}
}

func newErr(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, s, err := New(ctx, Options{Pool: "e"})
	if err == nil {
		b.Close()
		s.Close()
	}
	return err
}

func TestErrorNoCredentials(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	t.Setenv("MODAL_TOKEN_ID", "")
	t.Setenv("MODAL_TOKEN_SECRET", "")
	checkLine(t, newErr(t), ErrNoCredentials,
		"modal: connecting to Modal: no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` to write ~/.modal.toml")
}

func TestErrorWrongToken(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	const secret = "as-ThisIsTheWrongSecret42"
	t.Setenv("MODAL_TOKEN_SECRET", secret)
	err := newErr(t)
	checkLine(t, err, ErrTokenRejected,
		"modal: connecting to Modal: Modal rejected the token ak-fake (check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml): Token ID or secret is invalid. Please check your Modal token credentials.")
	if strings.Contains(err.Error(), secret) {
		t.Fatal("secret printed")
	}

	// A revoked token (right pair, refused by the server) reads the same.
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	f.RejectTokens(true)
	checkLine(t, newErr(t), ErrTokenRejected,
		"modal: connecting to Modal: Modal rejected the token ak-fake (check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml): Token ID or secret is invalid. Please check your Modal token credentials.")
}

func TestErrorUnreachable(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv("MODAL_SERVER_URL", "http://"+addr)
	checkLine(t, newErr(t), ErrUnreachable,
		"modal: connecting to Modal: cannot reach the Modal server at http://"+addr+": dial tcp "+addr+": connect: connection refused")
}

func TestErrorImageBuildFails(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, _ := open(t, Options{Pool: "img", Image: "python:9-nope"})
	f.FailImageBuilds("Error: pull access denied for python:9-nope\nrepository does not exist")
	_, err := b.Create(ctxT(t), time.Minute)
	checkLine(t, err, ErrImage,
		"modal: building image python:9-nope: the build failed: Error: pull access denied for python:9-nope repository does not exist")
	f.FailImageBuilds("") // not cached: the next create builds again
	if _, err := b.Create(ctxT(t), time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestErrorCreateRefused(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, _ := open(t, Options{Pool: "quota"})
	f.FailCreates(1, "")
	_, err := b.Create(ctxT(t), time.Minute)
	checkLine(t, err, ErrQuota,
		"modal: creating a sandbox in app example-sandbox-pool-sandboxes: refused by Modal (quota or limit reached): Workspace has reached its limit of concurrent sandboxes (quota exceeded)")
	if _, err := b.Create(ctxT(t), time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestOneLineScrubsSecrets(t *testing.T) {
	t.Setenv("MODAL_TOKEN_SECRET", "s3cr3t-value")
	got := oneLine("bad\n  token s3cr3t-value and as-abcdefgh\tend")
	if got != "bad token *** and as-*** end" {
		t.Fatal(got)
	}
}

func TestCredentialsFromConfigFile(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	t.Setenv("MODAL_TOKEN_ID", "")
	t.Setenv("MODAL_TOKEN_SECRET", "")
	path := t.TempDir() + "/modal.toml"
	toml := "[other]\ntoken_id = \"x\"\n\n[me]\ntoken_id = \"" + f.TokenID + "\"\ntoken_secret = \"" + f.TokenSecret + "\"\nactive = true\n"
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MODAL_CONFIG_PATH", path)
	if err := newErr(t); err != nil {
		t.Fatal(err)
	}
}

// TestErrorKinds: every error says its kind in one word, for counting.
func TestErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		err  error
		kind string
	}{
		{wrap("reading the pool's queue", status.Error(codes.Unavailable, "connection refused")), "unreachable"},
		{wrap("reading the pool's queue", context.DeadlineExceeded), "timeout"},
		{wrap("reading the pool's queue", status.Error(codes.NotFound, "Queue qu-1 not found")), "not_found"},
		{wrap("creating a sandbox", status.Error(codes.ResourceExhausted, "quota")), "quota"},
		{wrap("x", errors.New("odd")), ""},
	} {
		if got := Kind(tc.err); got != tc.kind {
			t.Errorf("%v: kind %q, want %q", tc.err, got, tc.kind)
		}
		if strings.Contains(tc.err.Error(), "\n") {
			t.Errorf("%q is not one line", tc.err)
		}
	}
}
