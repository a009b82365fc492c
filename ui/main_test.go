package ui

import (
	"testing"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

func TestMain(m *testing.M) {
	// Goldens are plain text: no colour, a fixed background.
	lipgloss.SetColorProfile(termenv.Ascii)
	lipgloss.SetHasDarkBackground(true)
	// Every goroutine the dashboard starts ends with it.
	testkit.Main(m)
}
