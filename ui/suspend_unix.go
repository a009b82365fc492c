//go:build unix

package ui

import (
	"os"
	"os/signal"
	"syscall"

	tea "github.com/charmbracelet/bubbletea"
)

// suspendOnStop makes ctrl+z and a SIGTSTP from outside (kill -TSTP) one
// clean suspend: the terminal is given back (cooked mode, echo, the main
// screen) before the process stops, and taken back (raw mode, the full
// screen redrawn) when it continues. Without it the process stops in raw
// mode and resumes with the terminal in line mode. It stops itself with
// SIGSTOP, which no handler catches, so there is one path whoever asked.
// suspend is what ctrl+z runs: a SIGTSTP to this process.
func suspendOnStop(p *tea.Program) (suspend tea.Cmd, stop func()) {
	tstp := make(chan os.Signal, 1)
	signal.Notify(tstp, syscall.SIGTSTP)
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, syscall.SIGCONT)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-tstp:
			}
			if p.ReleaseTerminal() != nil {
				continue
			}
			for len(cont) > 0 { // a stale SIGCONT must not end the stop early
				<-cont
			}
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			select {
			case <-cont:
			case <-done:
				return
			}
			_ = p.RestoreTerminal() // raw mode again, and a full repaint
		}
	}()
	suspend = func() tea.Msg {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTSTP)
		return nil
	}
	return suspend, func() {
		close(done)
		<-ended
		signal.Stop(tstp)
		signal.Stop(cont)
	}
}
