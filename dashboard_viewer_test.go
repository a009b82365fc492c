package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// TestDashboardTmuxViewer: two dashboards on one pool in tmux at 100x30, the
// controller and a viewer beside it. The viewer sees the controller's claim
// and a CLI claim (the pool's journal), with counters; the controller's o
// sorts, y sends the selected id to the clipboard, l opens the log view.
func TestDashboardTmuxViewer(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed")
	}
	stateDir := t.TempDir()
	env := cliEnv(stateDir)
	socket := fmt.Sprintf("sp-ui-%d-%d", os.Getpid(), time.Now().UnixNano())
	ctl := &dashTmux{t: t, socket: socket, env: env, pane: "ctl"}
	view := &dashTmux{t: t, socket: socket, env: env, pane: "view"}
	var socketPath string
	t.Cleanup(func() {
		_, _ = ctl.tmux("kill-server")
		if socketPath != "" {
			os.Remove(socketPath)
		}
		cli(t, env, "terminate", "--all")
	})
	ctl.must("new-session", "-d", "-s", "ctl", "-x", "100", "-y", "30", "--",
		binary, "--size", "2", "--listen", "127.0.0.1:0", "--maintain-every", "2s", "--health-every", "1s")
	socketPath = strings.TrimSpace(ctl.must("display-message", "-p", "#{socket_path}"))
	ctl.must("set-option", "-t", "ctl", "remain-on-exit", "on")
	ctl.waitScreen("2 ready rows", dashWait, func(s string) bool {
		return dashCountState(dashRows(s), "ready") == 2 && strings.Contains(s, "maintained here")
	})

	view.must("new-session", "-d", "-s", "view", "-x", "100", "-y", "30", "--",
		binary, "--listen", "127.0.0.1:0", "--health-every", "1s")
	view.must("set-option", "-t", "view", "remain-on-exit", "on")
	view.waitScreen("the viewer naming the controller", dashWait, func(s string) bool {
		return strings.Contains(s, "maintained by") && strings.Contains(s, "pid ") && dashCountState(dashRows(s), "ready") == 2
	})

	// A claim in the controller's dashboard: the viewer sees it and counts it.
	ctl.keys("c")
	b := reDashBanner.FindStringSubmatch(ctl.waitScreen("the claim banner", dashWait, func(s string) bool { return reDashBanner.MatchString(s) }))
	claimed := b[1]
	view.waitScreen("the controller's claim in the viewer", dashWait, func(s string) bool {
		return strings.Contains(s, claimed+" claimed by dashboard (warm) · pid ") && strings.Contains(s, "claims: 1 warm")
	})

	// A claim from the CLI: both dashboards see it.
	r := cli(t, env, "claim", "--json")
	if r.code != 0 {
		t.Fatalf("claim: exit %d: %s", r.code, r.stderr)
	}
	cliID := regexp.MustCompile(`sb-[0-9a-f]+`).FindString(r.stdout)
	for _, x := range []*dashTmux{ctl, view} {
		x.waitScreen("the CLI's claim in "+x.pane, dashWait, func(s string) bool {
			return strings.Contains(s, cliID+" claimed by cli") && strings.Contains(s, "claims: 2 warm")
		})
	}

	// o sorts by age (the header says so), y copies the selected id.
	ctl.keys("o")
	ctl.waitScreen("sorted by age", dashWait, func(s string) bool {
		return strings.Contains(s, "sort: age") && strings.Contains(s, "AGE↓")
	})
	ctl.keys("y")
	var selected string
	screen := ctl.waitScreen("the id sent to the clipboard", dashWait, func(s string) bool {
		for _, r := range dashRows(s) {
			if r.selected {
				selected = r.id
			}
		}
		return selected != "" && strings.Contains(s, "id "+selected+" sent to clipboard")
	})
	if strings.Contains(screen, "copied") {
		t.Fatalf("the dashboard claims the copy arrived:\n%s", screen)
	}

	// l: the selected sandbox's log, esc back.
	ctl.keys("l")
	ctl.waitScreen("the log view", dashWait, func(s string) bool {
		return strings.Contains(s, "log "+selected) && (strings.Contains(s, "following") || strings.Contains(s, "no log for this backend"))
	})
	ctl.keys("Escape")
	ctl.waitScreen("the table again", dashWait, func(s string) bool { return strings.Contains(s, "AGE↓") })

	// The viewer quits first; the controller keeps the pool.
	view.keys("q")
	ctl.keys("q")
	for _, x := range []*dashTmux{view, ctl} {
		if !testkit.Until(15*time.Second, func() bool {
			return strings.TrimSpace(x.must("display-message", "-p", "-t", x.pane, "#{pane_dead}")) == "1"
		}) {
			t.Fatalf("%s did not exit after q:\n%s", x.pane, x.capture())
		}
	}
}
