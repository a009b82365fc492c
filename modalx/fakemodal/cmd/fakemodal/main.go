// Command fakemodal runs the fake Modal control plane as a process, for manual
// trials and end-to-end tests of the sandboxpool binary:
//
//	go run ./modalx/fakemodal/cmd/fakemodal -addr 127.0.0.1:0
//
// FAKEMODAL_LATENCY and FAKEMODAL_CREATE_DELAY (Go durations, e.g. 20ms and
// 1s) set -latency and -create-delay, so figures taken against it are
// reproducible: every RPC then takes that long, and every creation too.
//
// It prints the environment to use (MODAL_SERVER_URL, MODAL_TOKEN_ID,
// MODAL_TOKEN_SECRET, SSL_CERT_FILE) as `export` lines on stdout, and serves
// until SIGINT/SIGTERM, when every fake sandbox stops.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address of the gRPC server")
	dir := flag.String("dir", "", "directory for the CA certificate file (default: a temp dir, removed on exit)")
	tokenID := flag.String("token-id", "", "accepted MODAL_TOKEN_ID (default ak-fake)")
	tokenSecret := flag.String("token-secret", "", "accepted MODAL_TOKEN_SECRET (default as-fake-secret)")
	failCreates := flag.Int("fail-creates", 0, "refuse the first N sandbox creations with a quota error")
	failImage := flag.String("fail-image", "", "make every image build fail with this message")
	latency := flag.Duration("latency", envDuration("FAKEMODAL_LATENCY"), "delay every RPC by this much (env FAKEMODAL_LATENCY)")
	createDelay := flag.Duration("create-delay", envDuration("FAKEMODAL_CREATE_DELAY"), "every sandbox creation takes this long (env FAKEMODAL_CREATE_DELAY)")
	warmup := flag.Duration("warmup", 0, "new sandboxes answer 503 for this long")
	flag.Parse()

	f, err := fakemodal.Start(fakemodal.Options{Addr: *addr, Dir: *dir, TokenID: *tokenID, TokenSecret: *tokenSecret,
		Latency: *latency, CreateDelay: *createDelay})
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakemodal:", err)
		os.Exit(1)
	}
	f.FailCreates(*failCreates, "")
	f.FailImageBuilds(*failImage)
	f.SetWarmup(*warmup)
	for _, kv := range f.Env() {
		fmt.Println("export " + kv)
	}
	fmt.Fprintf(os.Stderr, "fakemodal: serving on %s (SSL_CERT_FILE=%s); ctrl+c stops it\n", f.URL, f.CACertFile)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			f.Close()
			return
		case <-tick.C:
			fmt.Fprintf(os.Stderr, "fakemodal: RPCs so far: %s\n", fakemodal.FormatCounts(f.Counts()))
		}
	}
}

// envDuration reads a duration from the environment; a bad value stops the
// fake with a line naming it.
func envDuration(name string) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		fmt.Fprintf(os.Stderr, "fakemodal: %s=%q: want a duration such as 20ms\n", name, v)
		os.Exit(2)
	}
	return d
}
