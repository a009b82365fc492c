package ui

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/charmbracelet/bubbles/cursor"
	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/textinput"
	"github.com/charmbracelet/bubbles/viewport"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
)

// mode is the dashboard's state machine: keys are routed by mode first.
type mode int

const (
	modeNormal mode = iota
	modeFilter      // typing a filter
	modePrompt      // the prompt: a target typed, or terminate (y/N)
	modeDetail      // one sandbox in full, with its timeline
	modeLog         // one sandbox's log
	modeHelp        // the full key help
)

// Limits of what the dashboard keeps.
const (
	logKeep    = 200 // event log lines
	healthKeep = 5   // health checks per sandbox, for the detail view
	infoFor    = 10 * time.Second
	minWidth   = 60
	minURLW    = 10
)

// logLine is one line of the event log.
type logLine struct {
	at   time.Time
	id   string // sandbox id, for the detail view
	text string
	err  string // set for errors: the dedupe key
	ui   bool   // written by the dashboard (command errors, LastError), not an engine event
}

// layout is computed on resize and on each snapshot, never per frame.
type layout struct {
	idW, urlW int
	showAge   bool
	bodyH     int // lines between the action line and the status line
	eventsN   int // event lines shown under the table (0: no events block)
	colHeader string
	urlNote   string // where the URLs went, under the table, when the header had no room
	footer    string // the key help line
}

// Model is the dashboard's root Bubble Tea model.
type Model struct {
	eng  Engine
	opts Options
	cfg  pool.Config
	clk  clockwork.Clock
	st   *styles
	keys keyMap
	life *lifecycle
	clip func(string) error

	width, height int
	lay           layout
	mode          mode

	snap     pool.Snapshot
	haveSnap bool
	now      time.Time
	frame    int
	events   <-chan pool.Event

	tbl       table
	order     sortOrder
	filter    string
	filterIn  textinput.Model
	prompt    prompt
	detail    detailView
	logv      logView
	logReturn mode // where esc leaves the log view
	help      help.Model
	flash     flash
	spark     sparks

	log    []logLine
	hist   history
	health map[string][]pool.Health
	mine   map[string]bool // terminations asked from here: "by this dashboard"

	// Requests in flight. seq numbers every request; results carry theirs.
	seq            int
	snapApplied    int
	snapInFlight   bool
	snapDirty      bool
	claiming       bool
	resizing       bool
	want           int // target asked for, while hasWant
	hasWant        bool
	wantClearAfter int // a snapshot newer than this shows want
	maintaining    bool
	nextMaintain   time.Time
	animating      bool
	lastErr        string
	quitting       bool
}

// NewModel builds the dashboard over eng without running it (tests run it
// with teatest; Run runs it on the terminal). Options.Clipboard nil writes
// OSC 52 to stdout.
func NewModel(eng Engine, opts Options) Model {
	return newModel(context.Background(), eng, opts)
}

func newModel(ctx context.Context, eng Engine, opts Options) Model {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	clip := opts.Clipboard
	if clip == nil {
		clip = osc52Clipboard(os.Stdout)
	}
	st := newStyles(defaultTheme())
	m := Model{
		eng: eng, opts: opts, cfg: eng.Config(), clk: opts.Clock, st: st,
		keys: newKeyMap(), life: newLifecycle(ctx), clip: clip,
		health: map[string][]pool.Health{}, hist: newHistory(), mine: map[string]bool{},
	}
	m.keys.setReadOnly(opts.ReadOnly)
	m.now = m.clk.Now()
	m.frame = frameAt(m.now)
	m.nextMaintain = m.now.Add(m.cfg.MaintainEvery)

	m.filterIn = newInput(st, "/ ", 64)
	m.prompt = newPrompt(st, m.cfg.MaxSize)
	m.detail.vp = viewport.New(0, 0)
	m.help = help.New()
	m.help.Styles = st.Help
	m.help.ShortSeparator = " · "
	m.help.FullSeparator = "     "

	// Init asks for the first snapshot.
	m.seq = 1
	m.snapInFlight = true
	return m
}

// newInput is a one-line input for the filter or the size prompt. Its
// cursor is a static block: a blinking one would need its ticks routed
// through Update, and would make every frame depend on wall-clock time.
// ctrl+v is off: a paste comes from the terminal (bracketed paste), not from
// the system clipboard.
func newInput(st *styles, prompt string, limit int) textinput.Model {
	in := textinput.New()
	in.Prompt = prompt
	in.CharLimit = limit
	in.PromptStyle = st.InputPrompt
	in.TextStyle = st.InputText
	in.PlaceholderStyle = st.Placeholder
	in.Cursor.Style = st.Cursor
	in.Cursor.TextStyle = st.InputText
	in.Cursor.SetMode(cursor.CursorStatic)
	in.KeyMap.Paste.SetEnabled(false)
	return in
}

// updateInput passes k to in, typed or pasted text keeping only its
// printable runes. (onKey has already split text read at once into single
// runes, so text such as "end" is never taken for the key of that name.)
func updateInput(in textinput.Model, k tea.KeyMsg) (textinput.Model, tea.Cmd) {
	if k.Type == tea.KeyRunes {
		runes := make([]rune, 0, len(k.Runes))
		for _, r := range k.Runes {
			if unicode.IsPrint(r) {
				runes = append(runes, r)
			}
		}
		k.Runes = runes
	}
	return in.Update(k)
}

// inputView draws in without the padding textinput adds up to its Width
// when the value is shorter: the width only bounds a long value (its tail
// is shown, where the cursor is).
func inputView(in textinput.Model) string {
	if in.Width > 0 && lipgloss.Width(in.Value()) <= in.Width {
		in.Width = 0
	}
	return in.View()
}

// frameAt is the spinner frame at t: time is data, so a fake clock pins it.
func frameAt(t time.Time) int {
	return int((t.UnixNano() / int64(spin.FPS)) % int64(len(spin.Frames)))
}

// Init subscribes to events, asks for the first snapshot and arms the two
// tickers.
func (m Model) Init() tea.Cmd {
	cmds := []tea.Cmd{
		subscribeCmd(m.life, m.eng),
		snapshotCmd(m.life, m.eng, 1),
		m.life.after(untilNextSecond(), clockTickMsg{}),
	}
	if m.cfg.MaintainEvery > 0 {
		cmds = append(cmds, m.life.after(m.cfg.MaintainEvery, maintainTickMsg{}))
	}
	return tea.Batch(cmds...)
}

// Update routes every message; it never blocks.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.relayout()
		return m, nil
	case tea.KeyMsg:
		return m.onKey(msg)
	case subscribedMsg:
		m.life.setUnsub(msg.cancel)
		m.events = msg.events
		return m, tea.Batch(listenCmd(m.life, m.events), m.refresh())
	case eventsMsg:
		m.onEvents(msg.events)
		return m, tea.Batch(listenCmd(m.life, m.events), m.refresh())
	case eventsClosedMsg:
		m.events = nil
		m.addLog(logLine{at: m.clk.Now(), text: "the engine stopped sending events", ui: true})
		return m, nil
	case snapshotMsg:
		return m, m.onSnapshot(msg)
	case clockTickMsg:
		m.now = m.clk.Now()
		m.flash.tick(m.now, infoFor)
		if m.mode == modeDetail {
			m.refreshDetail()
		}
		return m, tea.Batch(m.life.after(untilNextSecond(), clockTickMsg{}), m.refresh())
	case animTickMsg:
		if !m.anySpinning() {
			m.animating = false
			return m, nil
		}
		m.frame = frameAt(m.clk.Now())
		return m, m.life.after(spin.FPS, animTickMsg{})
	case maintainTickMsg:
		m.nextMaintain = m.clk.Now().Add(m.cfg.MaintainEvery)
		cmds := []tea.Cmd{m.life.after(m.cfg.MaintainEvery, maintainTickMsg{})}
		if m.ownsMaintenance() && !m.maintaining {
			m.maintaining = true
			m.seq++
			cmds = append(cmds, maintainCmd(m.life, m.eng, m.seq, false))
		}
		return m, tea.Batch(cmds...)
	case claimDoneMsg:
		return m, m.onClaimDone(msg)
	case resizeDoneMsg:
		return m, m.onResizeDone(msg)
	case terminateDoneMsg:
		if msg.err != nil {
			delete(m.mine, msg.id)
			m.fail(msg.seq, "terminate "+msg.id, msg.err)
		} else {
			m.info(msg.seq, msg.id+" terminated")
		}
		return m, m.refresh()
	case maintainDoneMsg:
		m.maintaining = false
		if msg.err != nil && m.life.ctx.Err() == nil {
			m.fail(msg.seq, "maintenance pass", msg.err)
		} else if msg.manual && msg.err == nil {
			m.info(msg.seq, "maintenance pass done")
		}
		return m, m.refresh()
	case copyDoneMsg:
		switch {
		case msg.id == "":
			m.flash.copied(msg.seq, msg.err)
		case msg.err != nil:
			m.fail(msg.seq, "copy "+msg.id, msg.err)
		default:
			// OSC 52 is written; whether the terminal took it, nobody knows.
			m.info(msg.seq, "id "+msg.id+" sent to clipboard")
		}
		return m, nil
	case logReadMsg:
		return m, m.onLogRead(msg)
	case logPollMsg:
		return m, m.onLogPoll(msg)
	case tea.ResumeMsg:
		// Back from ctrl+z or kill -TSTP: the shell drew over the screen.
		return m, tea.ClearScreen
	}
	return m, nil
}

// ---- keys, by mode ----

func (m Model) onKey(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	// Bubble Tea delivers runes that arrive together (fast typing, a
	// terminal multiplexer sending keys) as one message: "jt" is j, then t.
	if k.Type == tea.KeyRunes && len(k.Runes) > 1 && !k.Paste {
		var cmds []tea.Cmd
		var next tea.Model = m
		for _, r := range k.Runes {
			var cmd tea.Cmd
			next, cmd = next.(Model).onKey(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}, Alt: k.Alt})
			cmds = append(cmds, cmd)
			if next.(Model).quitting {
				break // keys after q go nowhere
			}
		}
		return next, tea.Batch(cmds...)
	}
	switch {
	case k.Type == tea.KeyCtrlC:
		return m.quit()
	case key.Matches(k, globalKeys.Suspend):
		return m, m.life.suspendCmd()
	case key.Matches(k, globalKeys.Redraw):
		return m, tea.ClearScreen
	}
	switch m.mode {
	case modeFilter:
		return m.keyFilter(k)
	case modePrompt:
		return m.keyPrompt(k)
	case modeDetail:
		return m.keyDetail(k)
	case modeLog:
		return m.keyLog(k)
	case modeHelp:
		return m.keyHelp(k)
	}
	return m.keyNormal(k)
}

func (m Model) quit() (tea.Model, tea.Cmd) {
	m.quitting = true
	m.life.stop() // engine calls in flight are cancelled; sandboxes keep running
	return m, tea.Quit
}

func (m Model) keyNormal(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	km := &m.keys
	switch {
	case key.Matches(k, km.Quit):
		return m.quit()
	case key.Matches(k, km.Up):
		m.tbl.move(-1)
	case key.Matches(k, km.Down):
		m.tbl.move(1)
	case key.Matches(k, km.PageUp):
		m.tbl.move(-m.tbl.height)
	case key.Matches(k, km.PageDown):
		m.tbl.move(m.tbl.height)
	case key.Matches(k, km.Top):
		m.tbl.move(-len(m.tbl.rows))
	case key.Matches(k, km.Bottom):
		m.tbl.move(len(m.tbl.rows))
	case key.Matches(k, km.Claim):
		return m, m.claim()
	case key.Matches(k, km.Grow):
		return m, m.resizeBy(1)
	case key.Matches(k, km.Shrink):
		return m, m.resizeBy(-1)
	case key.Matches(k, km.Size):
		m.setMode(modePrompt)
		return m, m.prompt.openSize()
	case key.Matches(k, km.Terminate):
		if sb, ok := m.tbl.selected(); ok {
			m.prompt.openConfirm(sb.ID, "terminate "+sb.ID+" ("+string(sb.State)+")")
			m.setMode(modePrompt)
		}
	case key.Matches(k, km.Refill):
		return m, m.refill()
	case key.Matches(k, km.Autosize):
		m.autosizeOn()
	case key.Matches(k, km.Filter):
		m.filterIn.SetValue(m.filter)
		m.filterIn.CursorEnd()
		m.setMode(modeFilter)
		return m, m.filterIn.Focus()
	case key.Matches(k, km.Detail):
		if sb, ok := m.tbl.selected(); ok {
			m.detail.id = sb.ID
			m.setMode(modeDetail)
			m.refreshDetail()
			m.detail.vp.GotoTop()
		}
	case key.Matches(k, km.Log):
		if sb, ok := m.tbl.selected(); ok {
			m.logReturn = modeNormal
			return m, m.openLog(sb.ID)
		}
	case key.Matches(k, km.Copy):
		if sb, ok := m.tbl.selected(); ok {
			return m, m.copyID(sb.ID)
		}
	case key.Matches(k, km.Sort):
		m.order = m.order.next()
		m.setRows()
		m.relayout()
		m.info(m.seq, "sorted by "+m.order.String())
	case key.Matches(k, km.Help):
		m.setMode(modeHelp)
	case key.Matches(k, km.Back):
		switch {
		case m.flash.banner.id != "":
			m.flash.closeBanner()
		case m.filter != "":
			m.setFilter("")
		default:
			m.flash.clearStatus()
		}
	}
	return m, nil
}

// copyID sends a sandbox's full id to the clipboard (OSC 52).
func (m *Model) copyID(id string) tea.Cmd {
	m.seq++
	return copyCmd(m.clip, m.seq, id, id)
}

func (m Model) keyFilter(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch {
	case key.Matches(k, filterKeys.Keep):
		m.filterIn.Blur()
		m.setMode(modeNormal)
		return m, nil
	case key.Matches(k, filterKeys.Clear):
		m.filterIn.Blur()
		m.setFilter("")
		m.setMode(modeNormal)
		return m, nil
	}
	var cmd tea.Cmd
	m.filterIn, cmd = updateInput(m.filterIn, k)
	if v := m.filterIn.Value(); v != m.filter {
		m.setFilter(v)
	}
	return m, cmd
}

func (m Model) keyPrompt(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	kind := m.prompt.kind
	p, res, n, cmd := m.prompt.update(k)
	m.prompt = p
	if res == promptOpen {
		return m, cmd
	}
	m.setMode(modeNormal)
	switch {
	case kind == promptConfirm && res == promptAccepted:
		return m, m.terminate(p.subject)
	case kind == promptConfirm:
		m.info(m.seq, "terminate "+p.subject+" cancelled")
	case res == promptAccepted:
		return m, m.setTarget(n)
	default:
		m.info(m.seq, "target unchanged")
	}
	return m, nil
}

func (m Model) keyDetail(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch {
	case key.Matches(k, detailKeys.Quit):
		return m.quit()
	case key.Matches(k, detailKeys.Back):
		m.setMode(modeNormal)
		return m, nil
	case key.Matches(k, detailKeys.Copy):
		return m, m.copyID(m.detail.id)
	case key.Matches(k, detailKeys.Log):
		m.logReturn = modeDetail
		return m, m.openLog(m.detail.id)
	}
	var cmd tea.Cmd
	m.detail.vp, cmd = m.detail.vp.Update(k)
	return m, cmd
}

func (m Model) keyHelp(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch {
	case key.Matches(k, helpKeys.Quit):
		return m.quit()
	case key.Matches(k, helpKeys.Close):
		m.setMode(modeNormal)
	}
	return m, nil
}

func (m *Model) setMode(md mode) {
	m.mode = md
	m.updateFooter()
}

func (m *Model) setFilter(q string) {
	m.filter = q
	if m.filterIn.Value() != q {
		m.filterIn.SetValue(q)
		m.filterIn.CursorEnd()
	}
	m.setRows()
}

// setRows shows the snapshot's sandboxes, filtered and sorted.
func (m *Model) setRows() {
	m.tbl.setRows(sortRows(filterRows(m.snap.Sandboxes, m.filter), m.order))
}

// parseTarget validates a typed target; the error says what is allowed.
func parseTarget(s string, maxSize int) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("type a number from 0 to %d", maxSize)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number: type 0 to %d", s, maxSize)
	}
	if err := checkTarget(n, maxSize); err != nil {
		return 0, err
	}
	return n, nil
}

func checkTarget(n, maxSize int) error {
	switch {
	case n < 0:
		return fmt.Errorf("%d: the target cannot be below 0", n)
	case n > maxSize:
		return fmt.Errorf("%d: the target cannot be above %d (--max-size)", n, maxSize)
	}
	return nil
}

// ---- engine requests ----

// refresh asks for a snapshot; requests coalesce (one in flight at most).
func (m *Model) refresh() tea.Cmd {
	if m.snapInFlight {
		m.snapDirty = true
		return nil
	}
	m.snapInFlight = true
	m.seq++
	return snapshotCmd(m.life, m.eng, m.seq)
}

func (m *Model) claim() tea.Cmd {
	if m.claiming {
		m.info(m.seq, "a claim is already waiting for a sandbox")
		return nil
	}
	m.claiming = true
	m.seq++
	m.note(m.seq, "claiming a sandbox…")
	return claimCmd(m.life, m.eng, m.seq)
}

func (m *Model) onClaimDone(msg claimDoneMsg) tea.Cmd {
	m.claiming = false
	if msg.err != nil {
		if m.life.ctx.Err() == nil {
			err := msg.err
			if errors.Is(err, pool.ErrTargetZero) {
				err = fmt.Errorf("%w (+ or s to grow the pool)", err)
			}
			m.fail(msg.seq, "claim failed", err)
		}
		return m.refresh()
	}
	m.flash.ended(msg.seq) // "claiming…": the banner says the rest
	var cmds []tea.Cmd
	if c := msg.claimed; m.flash.claimed(msg.seq, c.ID, c.URL, c.ExpiresAt) {
		cmds = append(cmds, copyCmd(m.clip, msg.seq, "", c.URL))
	}
	return tea.Batch(append(cmds, m.refresh())...)
}

// targetNow is the target as the user last set it, or as the engine says.
func (m *Model) targetNow() int {
	if m.hasWant {
		return m.want
	}
	return m.snap.Target
}

// setTarget is a typed target: the same target again asks nothing (the
// engine would log "target 4 -> 4"), unless it pins an autosized pool.
func (m *Model) setTarget(n int) tea.Cmd {
	if n == m.targetNow() && !m.resizing && !m.snap.Autosize.On {
		m.info(m.seq, fmt.Sprintf("the target is already %d", n))
		return nil
	}
	return m.requestResize(n)
}

func (m *Model) resizeBy(d int) tea.Cmd {
	if !m.haveSnap {
		return nil
	}
	n := m.targetNow() + d
	if err := checkTarget(n, m.cfg.MaxSize); err != nil {
		m.seq++
		m.flash.failed(m.seq, err.Error(), m.clk.Now())
		return nil
	}
	return m.requestResize(n)
}

// requestResize sets the target to n. Resizes go one at a time, the last
// one asked winning, so that + + + cannot land out of order.
func (m *Model) requestResize(n int) tea.Cmd {
	m.want, m.hasWant, m.wantClearAfter = n, true, 0
	if m.resizing {
		return nil
	}
	m.resizing = true
	m.seq++
	m.note(m.seq, fmt.Sprintf("setting the target to %d…", n))
	return resizeCmd(m.life, m.eng, m.seq, n)
}

func (m *Model) onResizeDone(msg resizeDoneMsg) tea.Cmd {
	m.resizing = false
	if msg.err != nil {
		m.hasWant = false
		m.fail(msg.seq, fmt.Sprintf("set the target to %d", msg.n), msg.err)
		return m.refresh()
	}
	if m.hasWant && m.want != msg.n {
		return tea.Batch(m.requestResize(m.want), m.refresh())
	}
	m.info(msg.seq, fmt.Sprintf("target set to %d", msg.n))
	m.wantClearAfter = m.seq
	return m.refresh()
}

// autosizeOn is the `a` key. Autosize runs where the pool is maintained:
// a viewer says so instead.
func (m *Model) autosizeOn() {
	m.seq++
	switch {
	case m.snap.Role == "viewer":
		m.info(m.seq, "autosize runs in the controller ("+oneLine(m.snap.LeaseHolder)+"): press a there")
	case m.snap.Autosize.On:
		m.info(m.seq, "autosize is already on")
	default:
		m.eng.SetAutosize(true)
		m.hasWant = false
		m.info(m.seq, "autosize on: the target follows demand")
	}
}

func (m *Model) terminate(id string) tea.Cmd {
	m.seq++
	m.mine[id] = true
	m.note(m.seq, "terminating "+id+"…")
	return terminateCmd(m.life, m.eng, m.seq, id)
}

// refill runs a maintenance pass now, unless another process maintains
// the pool (a viewer) or a pass is already running.
func (m *Model) refill() tea.Cmd {
	if m.snap.Role == "viewer" {
		m.info(m.seq, "the pool is maintained by "+m.snap.LeaseHolder+": it refills on its own")
		return nil
	}
	if m.maintaining {
		m.info(m.seq, "a maintenance pass is already running")
		return nil
	}
	m.maintaining = true
	m.seq++
	m.note(m.seq, "refilling: maintenance pass…")
	return maintainCmd(m.life, m.eng, m.seq, true)
}

// ownsMaintenance says whether the UI's ticker runs the passes: only when
// no maintenance loop runs in this process (Role "") and not read-only. A
// controller runs its own loop and shows its NextPass; a viewer leaves
// passes to the holder.
func (m *Model) ownsMaintenance() bool {
	return !m.opts.ReadOnly && m.haveSnap && m.snap.Role == ""
}

// ---- state ----

func (m *Model) onSnapshot(msg snapshotMsg) tea.Cmd {
	m.snapInFlight = false
	var cmds []tea.Cmd
	if msg.seq > m.snapApplied {
		m.snapApplied = msg.seq
		m.applySnapshot(msg.snap)
		if m.hasWant && !m.resizing && m.wantClearAfter > 0 && msg.seq > m.wantClearAfter {
			m.hasWant = false
		}
		if !m.animating && m.anySpinning() {
			m.animating = true
			cmds = append(cmds, m.life.after(spin.FPS, animTickMsg{}))
		}
	}
	if m.snapDirty {
		m.snapDirty = false
		cmds = append(cmds, m.refresh())
	}
	return tea.Batch(cmds...)
}

func (m *Model) applySnapshot(s pool.Snapshot) {
	m.snap, m.haveSnap = s, true
	m.now = m.clk.Now()
	m.frame = frameAt(m.now)
	m.recordHealth(s.Sandboxes)
	m.hist.observe(s.Sandboxes, m.now)
	m.spark.sample(m.now, s.Counts[pool.StateReady])
	if b := m.flash.banner; b.id != "" && b.ended == "" && !slices.ContainsFunc(s.Sandboxes, func(sb pool.Sandbox) bool { return sb.ID == b.id }) {
		m.flash.sandboxEnded(b.id, "gone from the pool")
	}
	m.setRows()
	m.relayout()
	if s.LastError != m.lastErr {
		m.lastErr = s.LastError
		if s.LastError != "" {
			m.addLog(logLine{at: m.now, text: "error: " + s.LastError, err: s.LastError, ui: true})
		}
		m.flash.engineErr(m.seq, s.LastError, m.clk.Now())
	}
	if m.mode == modeDetail {
		m.refreshDetail()
	}
}

func (m *Model) anySpinning() bool {
	return m.snap.Counts[pool.StateCreating]+m.snap.Counts[pool.StateWarming] > 0
}

func (m *Model) recordHealth(sbs []pool.Sandbox) {
	for i := range sbs {
		m.noteHealth(sbs[i].ID, sbs[i].Health)
	}
	if len(m.health) > 2*len(sbs)+64 { // forget sandboxes long gone
		live := make(map[string]bool, len(sbs))
		for i := range sbs {
			live[sbs[i].ID] = true
		}
		for id := range m.health {
			if !live[id] {
				delete(m.health, id)
			}
		}
	}
}

func (m *Model) noteHealth(id string, h pool.Health) {
	if id == "" || !h.Checked() {
		return
	}
	hs := m.health[id]
	if n := len(hs); n > 0 && hs[n-1].CheckedAt.Equal(h.CheckedAt) {
		return
	}
	hs = append(hs, h)
	if len(hs) > healthKeep {
		hs = hs[len(hs)-healthKeep:]
	}
	m.health[id] = hs
}

func (m *Model) onEvents(evs []pool.Event) {
	for _, e := range evs {
		if e.Time.IsZero() {
			e.Time = m.clk.Now()
		}
		m.noteHealth(e.SandboxID, e.Health)
		by := ""
		switch e.Kind {
		case pool.EventTerminated:
			if m.mine[e.SandboxID] && origin(e) == "" {
				by = "this dashboard"
				delete(m.mine, e.SandboxID)
			}
			m.flash.sandboxEnded(e.SandboxID, "terminated ("+e.Reason+")")
		case pool.EventClaimed:
			m.spark.claim(e.Time, e.Duration)
		}
		m.hist.event(e, by)
		if e.Routine() {
			continue
		}
		m.addLog(logLine{at: e.Time, id: e.SandboxID, text: eventText(e), err: e.Err})
	}
}

// addLog appends to the event log. An error the dashboard noted (a failed
// command, LastError) and the engine's event for the same error make one
// line, the engine's.
func (m *Model) addLog(l logLine) {
	l.text = oneLine(l.text)
	if l.err != "" {
		for i := len(m.log) - 1; i >= max(len(m.log)-8, 0); i-- {
			o := m.log[i]
			if o.err == "" || o.ui == l.ui || !sameErr(o.err, l.err) {
				continue
			}
			if l.ui {
				return // the engine said it already
			}
			m.log = append(m.log[:i], m.log[i+1:]...) // the engine's line replaces ours
			break
		}
	}
	m.log = append(m.log, l)
	if len(m.log) > logKeep {
		m.log = append(m.log[:0:0], m.log[len(m.log)-logKeep:]...)
	}
}

func sameErr(a, b string) bool { return strings.Contains(a, b) || strings.Contains(b, a) }

// info shows a note, unless a newer request already put something there.
func (m *Model) info(seq int, text string) { m.flash.info(seq, text, m.clk.Now()) }

// note shows a request in flight; it stays until the request ends.
func (m *Model) note(seq int, text string) { m.flash.note(seq, text, m.clk.Now()) }

// fail shows a failed command in the status line and the event log.
func (m *Model) fail(seq int, what string, err error) {
	text := what + ": " + err.Error()
	m.addLog(logLine{at: m.clk.Now(), text: text, err: err.Error(), ui: true})
	m.flash.failed(seq, text, m.clk.Now())
}

// eventText is an event's line: the engine's words, with the whole id
// (the engine shortens long ids; the view cuts with … only what does not fit).
func eventText(e pool.Event) string {
	text := e.Message
	if text == "" {
		text = string(e.Kind)
	}
	if id := e.SandboxID; id != "" && !strings.Contains(text, id) {
		if short := pool.ShortID(id); short != id {
			text = strings.Replace(text, short, id, 1)
		}
	}
	return text
}
