package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sandboxpool/sandboxpool/pool"
)

// fuzzFlags are the flags whose values are parsed (not just stored): every
// one of them is fuzzed, from the command line and from the environment.
var fuzzFlags = []string{
	"ttl", "use-duration", "health-timeout", "health-every", "health-fresh", "maintain-every", "warmup",
	"size", "max-size", "max-creating", "port", "backend", "pool", "log-level",
}

// clearSandboxpoolEnv unsets every SANDBOXPOOL_ variable for the rest of the
// test (a fuzz worker inherits the caller's environment).
func clearSandboxpoolEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "SANDBOXPOOL_") {
			t.Setenv(name, "") // restores it at the end
			os.Unsetenv(name)
		}
	}
}

func envName(flag string) string {
	return "SANDBOXPOOL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parsesAs says whether pflag accepts v for a flag of that type.
func parsesAs(typ, v string) bool {
	switch typ {
	case "duration":
		_, err := time.ParseDuration(v)
		return err == nil
	case "int":
		n, err := strconv.ParseInt(v, 0, 64)
		return err == nil && n == int64(int(n))
	}
	return true
}

// checkOneLine fails unless err is a usage error (exit 2) whose printed line
// is its whole text and names what (a flag or a variable).
func checkOneLine(t *testing.T, err error, what string) {
	t.Helper()
	var ue usageError
	if !errors.As(err, &ue) && !isCobraUsage(err) {
		t.Fatalf("error %q would exit 1, want a usage error (exit 2)", err)
	}
	msg := err.Error()
	if line := oneLine(msg); line != msg || line == "" {
		t.Fatalf("error is not one line: %q", msg)
	}
	if what != "" && !strings.Contains(msg, what) {
		t.Fatalf("error %q does not name %s", msg, what)
	}
}

// FuzzFlags: any value of any flag, from the command line or the env, is
// either taken or rejected with one line naming the flag (or variable) and
// quoting the value; never a panic. What options.config accepts is a valid
// engine config that pool.New takes.
func FuzzFlags(f *testing.F) {
	for i, v := range []string{"5m", "-1s", "0", "1h1m1s", "9223372036854775807ns", "9999999999h", "1e3s", ".5s", "30", "abc", "",
		`a"b`, "a\nb", "\\", "0x10", "-0", "1_000", "07", "65536", "modal", "Local", "../x", "débug", "ÿ", "\xff"} {
		f.Add(uint8(i), v, uint8(i*7), v, false)
		f.Add(uint8(i*3), v, uint8(i), "2m", true)
	}
	f.Fuzz(func(t *testing.T, cliFlag uint8, cliValue string, envFlag uint8, envValue string, separate bool) {
		clearSandboxpoolEnv(t)
		cliName := fuzzFlags[int(cliFlag)%len(fuzzFlags)]
		envFlagName := fuzzFlags[int(envFlag)%len(fuzzFlags)]
		envVar := envName(envFlagName)
		// An env value with a NUL cannot be set (nor come from a real environment).
		if strings.IndexByte(envValue, 0) >= 0 {
			envValue = strings.ReplaceAll(envValue, "\x00", "")
		}
		t.Setenv(envVar, envValue)
		args := []string{"--" + cliName + "=" + cliValue}
		if separate {
			args = []string{"--" + cliName, cliValue}
		}

		// 1. The whole command line, as main runs it, on a command that
		// starts nothing.
		root := newRootCommand()
		var out, errb bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errb)
		root.SetArgs(append([]string{"version"}, args...))
		err := root.Execute()
		cliOK := parsesAs(typeOf(t, cliName), cliValue)
		envOK := envFlagName == cliName || parsesAs(typeOf(t, envFlagName), envValue)
		switch {
		case !cliOK:
			if err == nil {
				t.Fatalf("--%s %q was taken", cliName, cliValue)
			}
			checkOneLine(t, err, "--"+cliName)
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", cliValue)) {
				t.Fatalf("error %q does not quote the value %q", err, cliValue)
			}
		case !envOK:
			if err == nil {
				t.Fatalf("%s=%q was taken", envVar, envValue)
			}
			checkOneLine(t, err, envVar)
		case err != nil:
			t.Fatalf("--%s %q and %s=%q: %v", cliName, cliValue, envVar, envValue, err)
		case !strings.HasPrefix(out.String(), "sandboxpool "):
			t.Fatalf("version printed %q", out.String())
		}
		if err != nil {
			return
		}

		// 2. The same flags into the engine's config, as every command does.
		o := &options{}
		cmd := &cobra.Command{Use: "fuzz"}
		o.register(cmd.Flags())
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatalf("parse %q: %v", args, err)
		}
		if err := applyEnv(cmd.Flags()); err != nil {
			t.Fatalf("env: %v", err)
		}
		cfg, err := o.config(sizeSet(cmd))
		if err != nil {
			checkOneLine(t, err, "--")
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("config() took a config that Validate rejects: %v", err)
		}
		if cfg.TTL != o.ttl || cfg.UseDuration != o.useDuration || cfg.Size != o.size || cfg.Pool != o.pool {
			t.Fatalf("config %+v does not hold the flags %+v", cfg, o)
		}
		if cfg.UseDuration >= cfg.TTL || cfg.Size < 0 || cfg.Size > cfg.MaxSize {
			t.Fatalf("config() took %+v", cfg)
		}
		if _, err := newLogger(o, &errb); err != nil {
			checkOneLine(t, err, "--log-level")
		}
		ctrl, err := pool.New(pool.Options{Config: cfg, Backend: nopBackend{}, Store: nopStore{}})
		if err != nil {
			t.Fatalf("pool.New rejects what config() took: %v", err)
		}
		ctrl.Close()
	})
}

func typeOf(t *testing.T, name string) string {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	(&options{}).register(fs)
	f := fs.Lookup(name)
	if f == nil {
		t.Fatalf("no flag %s", name)
	}
	return f.Value.Type()
}

// TestFlagErrorQuotesTheValue: a bad value is shown as given, even with
// quotes, backslashes or control characters in it (found by FuzzFlags: the
// value was cut out of pflag's already-quoted message and quoted again).
func TestFlagErrorQuotesTheValue(t *testing.T) {
	clearSandboxpoolEnv(t)
	for _, v := range []string{`a"b`, `a\b`, "a\nb", "x for \"--size\" flag"} {
		root := newRootCommand()
		root.SetOut(&bytes.Buffer{})
		root.SetArgs([]string{"version", "--ttl", v})
		err := root.Execute()
		want := fmt.Sprintf("--ttl %q: must be a duration", v)
		if err == nil || err.Error() != want+" such as 30s, 5m or 1h" {
			t.Errorf("--ttl %q: got %v, want %s...", v, err, want)
		}
	}
}

// nopBackend and nopStore let pool.New check a config; nothing runs.
type nopBackend struct{ pool.Backend }

func (nopBackend) Name() string { return "nop" }

type nopStore struct{ pool.Store }
