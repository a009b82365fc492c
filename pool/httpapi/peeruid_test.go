package httpapi_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// childGetEnv makes the test binary GET that URL, print "status body" and exit.
const childGetEnv = "HTTPAPI_TEST_CHILD_GET"

func maybeRunHTTPChild() {
	url := os.Getenv(childGetEnv)
	if url == "" {
		return
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if tok := os.Getenv("HTTPAPI_TEST_CHILD_TOKEN"); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(0)
	}
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
	os.Exit(0)
}

// getAs runs a GET of url from a child process running as uid (and gid).
func getAs(t *testing.T, uid int, url, token string) string {
	t.Helper()
	// The test binary sits in a private build dir: copy it where uid can run it.
	dir, err := os.MkdirTemp("", "httpapi-uid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = []string{childGetEnv + "=" + url, "HTTPAPI_TEST_CHILD_TOKEN=" + token, "PATH=/usr/bin:/bin"}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
	}
	return string(out)
}

// TestOtherUsersGet403 is issue 13 case 4: on the default loopback API
// without a token, another local user gets 403 on every endpoint, while the
// owner keeps working unchanged.
func TestOtherUsersGet403(t *testing.T) {
	if !httpapi.PeerUIDSupported {
		t.Skip("no peer uid on this system")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	const nobody = 65534
	e := newEnv(t, envOpts{size: 1, fill: true})
	for _, path := range []string{"/v1/pool", "/claim", "/healthz", "/metrics"} {
		out := getAs(t, nobody, e.base+path, "")
		if !strings.HasPrefix(out, "403 ") || !strings.Contains(out, `"error"`) || !strings.Contains(out, "uid 0") {
			t.Errorf("GET %s as uid %d: %q, want 403 with an error naming the owner's uid", path, nobody, out)
		}
	}
	// The owner: a plain request, no token.
	if r := e.do("GET", "/v1/pool", ""); r.status != http.StatusOK {
		t.Fatalf("owner GET /v1/pool: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/claim", ""); r.status != http.StatusOK {
		t.Fatalf("owner GET /claim: %d %s", r.status, r.body)
	}
	if v := metric(t, e, `sandboxpool_api_rejected_total{reason="forbidden"}`); v != "4" {
		t.Errorf(`sandboxpool_api_rejected_total{reason="forbidden"} = %q, want 4`, v)
	}
}

// With a token, the token decides, whoever connects.
func TestTokenOpensTheAPIToOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	const token = "0123456789abcdef-token"
	e := newEnv(t, envOpts{size: 1, fill: true, api: httpapi.Options{Token: token}})
	if out := getAs(t, 65534, e.base+"/v1/pool", token); !strings.HasPrefix(out, "200 ") {
		t.Fatalf("GET /v1/pool as uid 65534 with the token: %q", out)
	}
	if out := getAs(t, 65534, e.base+"/v1/pool", ""); !strings.HasPrefix(out, "401 ") {
		t.Fatalf("GET /v1/pool as uid 65534 without the token: %q", out)
	}
}
