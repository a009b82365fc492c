package ui

import (
	"os"
	"testing"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Goldens are plain text: no colour, a fixed background.
	lipgloss.SetColorProfile(termenv.Ascii)
	lipgloss.SetHasDarkBackground(true)
	code := m.Run()
	if code == 0 {
		// Every goroutine the dashboard starts ends with it. teatest's own
		// interrupt watcher never ends: it is not ours.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/charmbracelet/x/exp/teatest.NewTestModel.func2")); err != nil {
			println("goleak:", err.Error())
			code = 1
		}
	}
	os.Exit(code)
}
