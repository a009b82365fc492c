package ui

import (
	"unicode"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
)

// lineInput is a one-line text input for the filter and the size prompt.
//
// bubbles/textinput would do, but it imports github.com/atotto/clipboard,
// which is not in this module's go.mod; this covers what the dashboard
// needs: typing at the end, backspace, ctrl+u, ctrl+w, paste.
type lineInput struct {
	Prompt      string
	Placeholder string
	CharLimit   int
	Width       int // cells shown of the value (0: all)

	PromptStyle, TextStyle, PlaceholderStyle, CursorStyle lipgloss.Style

	value   []rune
	focused bool
}

func (in *lineInput) Value() string     { return string(in.value) }
func (in *lineInput) SetValue(s string) { in.value = in.limit([]rune(s)) }
func (in *lineInput) Focus() tea.Cmd    { in.focused = true; return nil }
func (in *lineInput) Blur()             { in.focused = false }
func (in *lineInput) limit(r []rune) []rune {
	if in.CharLimit > 0 && len(r) > in.CharLimit {
		r = r[:in.CharLimit]
	}
	return r
}

// Update edits the value on a key; it ignores everything else.
func (in lineInput) Update(msg tea.Msg) (lineInput, tea.Cmd) {
	k, ok := msg.(tea.KeyMsg)
	if !ok || !in.focused {
		return in, nil
	}
	switch k.Type {
	case tea.KeyBackspace:
		if n := len(in.value); n > 0 {
			in.value = in.value[:n-1]
		}
	case tea.KeyCtrlU:
		in.value = in.value[:0]
	case tea.KeyCtrlW:
		v := in.value
		for len(v) > 0 && unicode.IsSpace(v[len(v)-1]) {
			v = v[:len(v)-1]
		}
		for len(v) > 0 && !unicode.IsSpace(v[len(v)-1]) {
			v = v[:len(v)-1]
		}
		in.value = v
	case tea.KeyRunes, tea.KeySpace:
		add := k.Runes
		if k.Type == tea.KeySpace {
			add = []rune{' '}
		}
		for _, r := range add {
			if unicode.IsPrint(r) {
				in.value = append(in.value, r)
			}
		}
		in.value = in.limit(in.value)
	}
	return in, nil
}

// View draws the prompt, the value (its tail when wider than Width) and,
// when focused, a block cursor.
func (in lineInput) View() string {
	v := in.value
	if in.Width > 0 && len(v) > in.Width {
		v = v[len(v)-in.Width:]
	}
	out := in.PromptStyle.Render(in.Prompt)
	if len(v) == 0 && in.Placeholder != "" {
		if in.focused {
			out += in.CursorStyle.Render(" ")
		}
		return out + in.PlaceholderStyle.Render(in.Placeholder)
	}
	out += in.TextStyle.Render(string(v))
	if in.focused {
		out += in.CursorStyle.Render(" ")
	}
	return out
}
