package ui

import (
	"strconv"

	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/textinput"
	tea "github.com/charmbracelet/bubbletea"
)

// prompt is the action line's one question at a time: a target typed in
// (validated in place: a bad value leaves the prompt open with an error) or
// a (y/N) confirmation (anything but y cancels).
type prompt struct {
	kind    promptKind
	in      textinput.Model
	err     string
	subject string // confirm: what the question is about (a sandbox id)
	what    string // confirm: the question
	maxSize int
}

type promptKind int

const (
	promptNone promptKind = iota
	promptSize
	promptConfirm
)

// promptResult is what a key did to the prompt.
type promptResult int

const (
	promptOpen      promptResult = iota // still asking
	promptAccepted                      // size: value is the target; confirm: yes
	promptCancelled                     // esc, or anything but y
)

func newPrompt(st *styles, maxSize int) prompt {
	return prompt{in: newInput(st, "target: ", 6), maxSize: maxSize} // no Width: 6 runes always fit
}

func (p *prompt) openSize() tea.Cmd {
	p.kind, p.err = promptSize, ""
	p.in.SetValue("")
	return p.in.Focus()
}

func (p *prompt) openConfirm(subject, what string) {
	p.kind, p.err, p.subject, p.what = promptConfirm, "", subject, what
}

func (p *prompt) close() {
	p.kind, p.err = promptNone, ""
	p.in.Blur()
}

// update handles a key; value is the target when a size was accepted.
func (p prompt) update(k tea.KeyMsg) (prompt, promptResult, int, tea.Cmd) {
	if p.kind == promptConfirm {
		subject := p.subject
		p.close()
		p.subject = subject
		if key.Matches(k, confirmKeys.Yes) {
			return p, promptAccepted, 0, nil
		}
		return p, promptCancelled, 0, nil
	}
	switch {
	case key.Matches(k, promptKeys.Set):
		n, err := parseTarget(p.in.Value(), p.maxSize)
		if err != nil {
			p.err = err.Error()
			return p, promptOpen, 0, nil
		}
		p.close()
		return p, promptAccepted, n, nil
	case key.Matches(k, promptKeys.Cancel):
		p.close()
		return p, promptCancelled, 0, nil
	}
	var cmd tea.Cmd
	p.in, cmd = updateInput(p.in, k)
	p.err = ""
	return p, promptOpen, 0, cmd
}

func (p *prompt) view(st *styles, w int) string {
	if p.kind == promptConfirm {
		return truncate(st.Danger.wrap(p.what+"?")+" (y/N)", w)
	}
	l := p.in.View()
	if p.err != "" {
		l += "  " + st.Danger.wrap("✗ "+p.err)
	} else {
		l += st.Faint.wrap("  0 to " + strconv.Itoa(p.maxSize))
	}
	return truncate(l, w)
}
