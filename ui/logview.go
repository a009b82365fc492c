package ui

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/viewport"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/sandboxpool/sandboxpool/pool"
)

// The log view (l): the selected sandbox's workload output through the
// backend's pool.LogReader, read in a Cmd, following its end while the view
// is at the bottom (k/↑ pauses, G or f follows again).
const (
	logFirstRead = 256 << 10 // the last this many bytes when the view opens
	logChunk     = 256 << 10
	logKeepLines = 5000
	logPollEvery = time.Second
)

type logView struct {
	id      string
	seq     int // the view's number: results of an older view are dropped
	vp      viewport.Model
	lines   []string
	partial string // an unfinished last line
	next    int64
	follow  bool
	reading bool
	err     string
	none    string // why there is no log at all
}

type (
	logReadMsg struct {
		seq  int
		data []byte
		next int64
		err  error
	}
	logPollMsg struct{ seq int }
)

// open starts a view of id's log; it returns the first read.
func (m *Model) openLog(id string) tea.Cmd {
	m.seq++
	lv := &m.logv
	*lv = logView{id: id, seq: m.seq, vp: viewport.New(m.width, max(m.lay.bodyH-1, 1)), follow: true}
	m.setMode(modeLog)
	if m.opts.Logs == nil {
		lv.none = "no log for this backend (" + orDash(m.snap.Backend) + ")"
		lv.vp.SetContent(m.st.Faint.wrap("  " + lv.none))
		return nil
	}
	lv.reading = true
	return readLogCmd(m.life, m.opts.Logs, lv.seq, id, -1, logFirstRead)
}

func readLogCmd(l *lifecycle, r pool.LogReader, seq int, id string, off int64, n int) tea.Cmd {
	return l.call(func(ctx context.Context) tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		data, next, err := r.ReadLog(ctx, id, off, n)
		return logReadMsg{seq: seq, data: data, next: next, err: err}
	})
}

func (m *Model) onLogRead(msg logReadMsg) tea.Cmd {
	lv := &m.logv
	if msg.seq != lv.seq || m.mode != modeLog {
		return nil
	}
	lv.reading = false
	switch {
	case msg.err != nil && errors.Is(msg.err, pool.ErrNotFound):
		lv.err = "the sandbox is gone: its log ends here"
	case msg.err != nil:
		lv.err = oneLine(msg.err.Error())
	default:
		lv.err = ""
		if msg.next >= lv.next {
			lv.next = msg.next
		}
		lv.add(msg.data)
	}
	// Read again at once while there is more, else in a second.
	if msg.err == nil && len(msg.data) >= logChunk {
		lv.reading = true
		return readLogCmd(m.life, m.opts.Logs, lv.seq, lv.id, lv.next, logChunk)
	}
	return m.life.after(logPollEvery, logPollMsg{seq: lv.seq})
}

func (m *Model) onLogPoll(msg logPollMsg) tea.Cmd {
	lv := &m.logv
	if msg.seq != lv.seq || m.mode != modeLog || lv.reading || m.opts.Logs == nil {
		return nil
	}
	lv.reading = true
	return readLogCmd(m.life, m.opts.Logs, lv.seq, lv.id, lv.next, logChunk)
}

// add appends output, made safe to draw: escape sequences and control
// characters out (a workload's output must not drive the terminal), tabs
// expanded.
func (lv *logView) add(data []byte) {
	if len(data) == 0 {
		if lv.lines == nil {
			lv.render()
		}
		return
	}
	text := lv.partial + string(data)
	parts := strings.Split(text, "\n")
	lv.partial = parts[len(parts)-1]
	for _, p := range parts[:len(parts)-1] {
		lv.lines = append(lv.lines, cleanLine(p))
	}
	if over := len(lv.lines) - logKeepLines; over > 0 {
		lv.lines = append(lv.lines[:0:0], lv.lines[over:]...)
	}
	lv.render()
}

func (lv *logView) render() {
	all := lv.lines
	if lv.partial != "" {
		all = append(all[:len(all):len(all)], cleanLine(lv.partial))
	}
	if len(all) == 0 {
		lv.vp.SetContent("  (no output yet)")
	} else {
		lv.vp.SetContent(strings.Join(all, "\n"))
	}
	if lv.follow {
		lv.vp.GotoBottom()
	}
}

func cleanLine(s string) string {
	s = ansi.Strip(strings.TrimRight(s, "\r"))
	if i := strings.LastIndexByte(s, '\r'); i >= 0 {
		s = s[i+1:] // a progress bar redrawn in place: its last state
	}
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || !unicode.IsPrint(r) && r != ' ' }) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteString("    ")
		case r < 0x20 || r == 0x7f || !unicode.IsPrint(r) && r != ' ':
			b.WriteRune('�')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func (m Model) keyLog(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	lv := &m.logv
	switch {
	case key.Matches(k, logKeys.Quit):
		return m.quit()
	case key.Matches(k, logKeys.Back):
		m.logv.seq = 0 // reads in flight are dropped
		m.setMode(m.logReturn)
		return m, nil
	case key.Matches(k, logKeys.Copy):
		return m, m.copyID(lv.id)
	case key.Matches(k, logKeys.Follow):
		lv.follow = true
		lv.vp.GotoBottom()
		return m, nil
	case key.Matches(k, logKeys.Scroll):
		var cmd tea.Cmd
		lv.vp, cmd = lv.vp.Update(k)
		lv.follow = lv.vp.AtBottom()
		return m, cmd
	}
	return m, nil
}

// viewLog is the body of the log view: one title line and the viewport.
func (m *Model) viewLog(s *screen) {
	st, lv := m.st, &m.logv
	var state string
	switch {
	case lv.none != "":
		state = ""
	case lv.err != "":
		state = st.Warning.wrap(lv.err)
	case lv.follow:
		state = st.Faint.wrap("following")
	default:
		state = st.Faint.wrap("paused: G follows")
	}
	title := st.Title.wrap("log") + " " + lv.id
	right := state
	if lv.none == "" {
		right += st.Faint.wrap(" · " + strconv.Itoa(len(lv.lines)) + " lines")
	}
	s.line(spread(title, right, s.w))
	lv.vp.Width, lv.vp.Height = s.w, max(m.lay.bodyH-1, 1)
	s.lines(lv.vp.View(), m.lay.bodyH-1)
}
