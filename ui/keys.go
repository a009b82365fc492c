package ui

import (
	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/lipgloss"
)

// keyMap is the dashboard's normal-mode keys, as data: matching, the help
// line and the ? overlay all come from it.
type keyMap struct {
	Up, Down, PageUp, PageDown, Top, Bottom key.Binding

	// These change the pool; read-only drops them (see changesPool).
	Claim, Grow, Shrink, Size, Terminate, Refill, Autosize key.Binding

	Filter, Detail, Log, Copy, Sort, Help, Back, Quit key.Binding
}

func newKeyMap() keyMap {
	b := func(keys []string, k, desc string) key.Binding {
		return key.NewBinding(key.WithKeys(keys...), key.WithHelp(k, desc))
	}
	return keyMap{
		Up:        b([]string{"up", "k"}, "↑/k", "select up"),
		Down:      b([]string{"down", "j"}, "↓/j", "select down"),
		PageUp:    b([]string{"pgup"}, "pgup", "page up"),
		PageDown:  b([]string{"pgdown"}, "pgdn", "page down"),
		Top:       b([]string{"home", "g"}, "home/g", "first"),
		Bottom:    b([]string{"end", "G"}, "end/G", "last"),
		Claim:     b([]string{"c"}, "c", "claim"),
		Grow:      b([]string{"+"}, "+", "target +1"),
		Shrink:    b([]string{"-"}, "-", "target -1"),
		Size:      b([]string{"s"}, "s", "size"),
		Terminate: b([]string{"t"}, "t", "terminate"),
		Refill:    b([]string{"r"}, "r", "refill"),
		Autosize:  b([]string{"a"}, "a", "autosize on"),
		Filter:    b([]string{"/"}, "/", "filter"),
		Detail:    b([]string{"enter"}, "enter", "details"),
		Log:       b([]string{"l"}, "l", "log"),
		Copy:      b([]string{"y"}, "y", "copy id"),
		Sort:      b([]string{"o"}, "o", "sort"),
		Help:      b([]string{"?"}, "?", "help"),
		Back:      b([]string{"esc"}, "esc", "clear filter/banner"),
		Quit:      b([]string{"q", "ctrl+c"}, "q", "quit"),
	}
}

// changesPool lists the bindings that claim, resize, terminate or refill:
// the one place read-only turns keys off.
func (k *keyMap) changesPool() []*key.Binding {
	return []*key.Binding{&k.Claim, &k.Grow, &k.Shrink, &k.Size, &k.Terminate, &k.Refill, &k.Autosize}
}

func (k *keyMap) setReadOnly(ro bool) {
	for _, b := range k.changesPool() {
		b.SetEnabled(!ro)
	}
}

// ShortHelp is the one-line help, most useful first; fitHelp drops from the
// middle (keeping ? and q) when the line is too narrow.
func (k keyMap) ShortHelp() []key.Binding {
	target := key.NewBinding(key.WithKeys("+", "-"), key.WithHelp("+/-", "target"))
	target.SetEnabled(k.Grow.Enabled())
	sel := key.NewBinding(key.WithKeys("up", "down"), key.WithHelp("↑/↓", "select"))
	return []key.Binding{k.Claim, target, k.Size, k.Terminate, k.Detail, k.Log, k.Copy, k.Sort, k.Refill, k.Filter, sel, k.Help, k.Quit}
}

// FullHelp is the ? overlay, in columns.
func (k keyMap) FullHelp() [][]key.Binding {
	return [][]key.Binding{
		{k.Up, k.Down, k.PageUp, k.PageDown, k.Top, k.Bottom},
		{k.Claim, k.Grow, k.Shrink, k.Size, k.Terminate, k.Refill, k.Autosize},
		{k.Filter, k.Sort, k.Detail, k.Log, k.Copy},
		{k.Back, k.Help, globalKeys.Suspend, globalKeys.Redraw, k.Quit},
	}
}

// modeKeys is the help of a modal state (filter, prompt, confirm, detail,
// log, help): its named bindings, in help order.
type modeKeys []key.Binding

func (k modeKeys) ShortHelp() []key.Binding  { return k }
func (k modeKeys) FullHelp() [][]key.Binding { return [][]key.Binding{k} }

// Keys of each modal state, by name.
var (
	globalKeys = struct{ Suspend, Redraw key.Binding }{
		Suspend: key.NewBinding(key.WithKeys("ctrl+z"), key.WithHelp("ctrl+z", "suspend")),
		Redraw:  key.NewBinding(key.WithKeys("ctrl+l"), key.WithHelp("ctrl+l", "redraw")),
	}
	filterKeys = struct{ Keep, Clear key.Binding }{
		Keep:  key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "keep filter")),
		Clear: key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "clear")),
	}
	promptKeys = struct{ Set, Cancel key.Binding }{
		Set:    key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "set target")),
		Cancel: key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "cancel")),
	}
	confirmKeys = struct{ Yes, Other key.Binding }{
		Yes: key.NewBinding(key.WithKeys("y"), key.WithHelp("y", "terminate")),
		// Help only: any key but y cancels (the key name never matches).
		Other: key.NewBinding(key.WithKeys("other"), key.WithHelp("any other key", "cancels")),
	}
	detailKeys = struct{ Scroll, Back, Copy, Log, Quit key.Binding }{
		Scroll: key.NewBinding(key.WithKeys("up", "k", "down", "j", "pgup", "pgdown"), key.WithHelp("↑/↓", "scroll")),
		Back:   key.NewBinding(key.WithKeys("esc", "enter", "backspace"), key.WithHelp("esc", "back")),
		Copy:   key.NewBinding(key.WithKeys("y"), key.WithHelp("y", "copy id")),
		Log:    key.NewBinding(key.WithKeys("l"), key.WithHelp("l", "log")),
		Quit:   key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
	logKeys = struct{ Scroll, Follow, Back, Copy, Quit key.Binding }{
		Scroll: key.NewBinding(key.WithKeys("up", "k", "down", "j", "pgup", "pgdown", "home", "g"), key.WithHelp("↑/↓", "scroll")),
		Follow: key.NewBinding(key.WithKeys("end", "G", "f"), key.WithHelp("G/f", "follow")),
		Back:   key.NewBinding(key.WithKeys("esc", "backspace", "l"), key.WithHelp("esc", "back")),
		Copy:   key.NewBinding(key.WithKeys("y"), key.WithHelp("y", "copy id")),
		Quit:   key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
	helpKeys = struct{ Close, Quit key.Binding }{
		Close: key.NewBinding(key.WithKeys("esc", "?"), key.WithHelp("esc/?", "close")),
		Quit:  key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
)

// fitHelp renders bindings on one line of at most w cells, dropping the
// least useful items (those just before the last two, ? and q) first.
func fitHelp(h help.Model, bindings []key.Binding, w int) string {
	h.Width = 0
	var on []key.Binding
	for _, b := range bindings {
		if b.Enabled() {
			on = append(on, b)
		}
	}
	for {
		line := h.ShortHelpView(on)
		if lipgloss.Width(line) <= w || len(on) <= 2 {
			return truncate(line, w)
		}
		drop := max(len(on)-3, 0)
		on = append(on[:drop:drop], on[drop+1:]...)
	}
}
