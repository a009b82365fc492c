package ui

import (
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/x/ansi"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Pure formatting helpers: each takes the time it needs as an argument, so
// that what the screen shows is a function of the data and of "now".

const blanks = "                                                                                                                                                                                                                                                                "

func spaces(n int) string {
	if n <= 0 {
		return ""
	}
	if n <= len(blanks) {
		return blanks[:n]
	}
	return strings.Repeat(" ", n)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || s[i] < 0x20 {
			return false
		}
	}
	return true
}

// width is the number of terminal cells s takes.
func width(s string) int {
	if isASCII(s) {
		return len(s)
	}
	return ansi.StringWidth(s)
}

// fit pads or truncates s (with an ellipsis) to exactly w cells.
func fit(s string, w int) string {
	if w <= 0 {
		return ""
	}
	if isASCII(s) {
		switch {
		case len(s) == w:
			return s
		case len(s) < w:
			return s + spaces(w-len(s))
		case w == 1:
			return "…"
		}
		return s[:w-1] + "…"
	}
	sw := ansi.StringWidth(s)
	if sw > w {
		s = ansi.Truncate(s, w, "…")
		sw = ansi.StringWidth(s)
	}
	return s + spaces(w-sw)
}

// fitLeft right-aligns s in w cells.
func fitLeft(s string, w int) string {
	if n := width(s); n < w {
		return spaces(w-n) + s
	}
	return fit(s, w)
}

// truncate cuts s (which may hold escape sequences) to at most w cells.
func truncate(s string, w int) string {
	if isASCII(s) {
		if len(s) <= w {
			return s
		}
		return fit(s, w)
	}
	if ansi.StringWidth(s) <= w {
		return s
	}
	return ansi.Truncate(s, w, "…")
}

// oneLine flattens text from outside (errors, messages) to one line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\n\r\t\v\f") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

// fmtClock formats a countdown as m:ss (never negative).
func fmtClock(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	sec := s % 60
	out := strconv.FormatInt(s/60, 10) + ":"
	if sec < 10 {
		out += "0"
	}
	return out + strconv.FormatInt(sec, 10)
}

// fmtAge formats an age in at most five cells: 42s, 4m05s, 42m, 3h05m, 2d.
func fmtAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	two := func(n int64) string {
		if n < 10 {
			return "0" + strconv.FormatInt(n, 10)
		}
		return strconv.FormatInt(n, 10)
	}
	switch {
	case d < time.Minute:
		return strconv.FormatInt(s, 10) + "s"
	case d < 10*time.Minute:
		return strconv.FormatInt(s/60, 10) + "m" + two(s%60) + "s"
	case d < time.Hour:
		return strconv.FormatInt(s/60, 10) + "m"
	case d < 24*time.Hour:
		return strconv.FormatInt(s/3600, 10) + "h" + two(s%3600/60) + "m"
	}
	return strconv.FormatInt(s/86400, 10) + "d"
}

// fmtWait formats a short wait such as "next try in 12s": 12s, 1m05s.
func fmtWait(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	if d < time.Minute {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return fmtAge(d)
}

// fmtLatency formats a health check's latency: <1ms, 12ms, 1.2s.
func fmtLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return "<1ms"
	case d < time.Second:
		return strconv.FormatInt(int64(d.Round(time.Millisecond)/time.Millisecond), 10) + "ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

// healthText is the health column: "ok 200 1ms", "timeout", "refused", "500",
// or "–" when never checked.
func healthText(h pool.Health) string {
	switch {
	case !h.Checked():
		return "–"
	case h.OK:
		return "ok " + strconv.Itoa(h.Status) + " " + fmtLatency(h.Latency)
	case h.Error != "":
		return oneLine(h.Error)
	case h.Status != 0:
		return strconv.Itoa(h.Status)
	}
	return "failed"
}

// barColour is the TTL bar's colour: amber under use-duration + 1m, red
// under use-duration.
func barColour(left, use time.Duration) int {
	switch {
	case left < use:
		return barRed
	case left < use+time.Minute:
		return barAmber
	}
	return barOK
}

// barFill is how many of barW cells are filled for left of ttl (rounded up,
// so a sandbox with any time left shows at least one cell).
func barFill(left, ttl time.Duration) int {
	if left <= 0 || ttl <= 0 {
		return 0
	}
	if left >= ttl {
		return barW
	}
	return int((int64(left)*barW + int64(ttl) - 1) / int64(ttl))
}

// displayURL fits a URL in w cells, dropping the scheme before cutting.
func displayURL(u string, w int) string {
	if width(u) > w {
		if i := strings.Index(u, "://"); i >= 0 {
			u = u[i+3:]
		}
	}
	return fit(u, w)
}

// clockTime formats a wall time for the event log and the detail view.
func clockTime(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.Format(time.TimeOnly)
}
