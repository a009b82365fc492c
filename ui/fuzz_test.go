package ui

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
)

// wantTarget is what a typed target means, independently of parseTarget:
// a base-10 whole number, spaces around allowed, from 0 to maxSize.
func wantTarget(s string, maxSize int) (int, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	return n, err == nil && n >= 0 && n <= maxSize
}

// FuzzParseTarget: the size prompt's parser takes exactly the whole numbers
// from 0 to --max-size and refuses the rest with one line; never a panic.
// Through the model, a typed value is either asked of the engine as one
// resize or refused in the prompt with nothing asked, and the screen keeps
// its width.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"3", " 7 ", "0", "100", "101", "-1", "+5", "007", "0x10", "1_0", "1e2", "", " ", "abc",
		"５", "٣", "9223372036854775807", "99999999999999999999", "\t4\n", "1 2", "\x00", "\xff", "日本語"} {
		f.Add(s, uint16(100))
		f.Add(s, uint16(0))
	}
	f.Fuzz(func(t *testing.T, s string, maxSize uint16) {
		max := int(maxSize)
		n, err := parseTarget(s, max)
		want, ok := wantTarget(s, max)
		switch {
		case ok && (err != nil || n != want):
			t.Fatalf("parseTarget(%q, %d) = %d, %v; want %d", s, max, n, err, want)
		case !ok && err == nil:
			t.Fatalf("parseTarget(%q, %d) took %d", s, max, n)
		case err != nil && (strings.ContainsAny(err.Error(), "\r\n") || err.Error() == ""):
			t.Fatalf("parseTarget(%q) error is not one line: %q", s, err)
		}

		// The dashboard: s, the text (typed at once, as a paste), enter.
		d := newDriver(t, Options{})
		d.keys("s")
		d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)})
		typed := d.m.prompt.in.Value()
		// Printable runes are kept, but not U+FFFD (what invalid UTF-8
		// decodes to): textinput's sanitizer drops it.
		var kept []rune
		for _, r := range s {
			if unicode.IsPrint(r) && r != utf8.RuneError {
				kept = append(kept, r)
			}
		}
		if len(kept) > 6 {
			kept = kept[:6]
		}
		if typed != string(kept) {
			t.Fatalf("typed %q: the prompt holds %q, want %q", s, typed, string(kept))
		}
		before := d.f.Snapshot().Target
		d.keys("enter")
		maxUI := d.f.cfg.MaxSize
		if n, ok := wantTarget(typed, maxUI); ok {
			if n == before {
				d.wantCalls() // the same target asks nothing
			} else {
				d.wantCalls(fmt.Sprintf("resize %d", n))
			}
			if d.m.mode != modeNormal {
				t.Fatalf("typed %q: mode %d after a taken target", typed, d.m.mode)
			}
		} else {
			d.wantCalls()
			if d.m.mode != modePrompt || d.m.prompt.err == "" {
				t.Fatalf("typed %q: mode %d, error %q: want the prompt open with an error", typed, d.m.mode, d.m.prompt.err)
			}
		}
		for i, line := range strings.Split(d.view(), "\n") {
			if w := ansi.StringWidth(line); w > 80 {
				t.Fatalf("typed %q: line %d is %d cells wide:\n%s", typed, i, w, d.view())
			}
		}
	})
}
