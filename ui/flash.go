package ui

import (
	"strings"
	"time"
)

// flash is the dashboard's two transient lines, one job each (k9s's
// flash idea): the status line (a note that fades, a request in flight, or
// the last error) and the claim banner. Requests are numbered: a result
// only replaces what a newer request has not already replaced.
type flash struct {
	status status
	banner banner
}

// status is the status line: the last error or a short note.
type status struct {
	text       string
	isErr      bool
	fromEngine bool // Snapshot().LastError: cleared when the engine clears it
	pending    bool // a request in flight ("claiming…"): stays until it ends
	seq        int
	at         time.Time
}

// banner shows the last sandbox claimed from the dashboard, until esc or
// until that sandbox ends (then it says so instead of counting down).
type banner struct {
	seq     int
	id, url string
	expires time.Time
	sent    bool   // the OSC 52 sequence was written: whether the terminal took it, nobody can know
	copyErr string // writing it failed
	ended   string // "terminated (user)", "gone": the countdown stops
}

func (f *flash) set(s status, now time.Time) {
	s.text = oneLine(s.text)
	if s.at.IsZero() {
		s.at = now
	}
	f.status = s
}

// info shows a note, unless a newer request already put something there.
func (f *flash) info(seq int, text string, now time.Time) {
	if seq < f.status.seq {
		return
	}
	f.set(status{text: text, seq: seq}, now)
}

// note shows a request in flight; it stays until the request ends.
func (f *flash) note(seq int, text string, now time.Time) {
	f.set(status{text: text, seq: seq, pending: true}, now)
}

// failed shows an error; errors stay until replaced or cleared.
func (f *flash) failed(seq int, text string, now time.Time) {
	f.set(status{text: text, isErr: true, seq: max(seq, f.status.seq)}, now)
}

// engineErr shows (or, with "", clears) the engine's last error.
func (f *flash) engineErr(seq int, text string, now time.Time) {
	switch {
	case text != "":
		f.set(status{text: text, isErr: true, fromEngine: true, seq: seq}, now)
	case f.status.fromEngine:
		f.clearStatus()
	}
}

// ended clears the "…in flight" note of request seq (the result says the rest).
func (f *flash) ended(seq int) {
	if f.status.seq == seq && !f.status.isErr {
		f.status.text = ""
	}
}

func (f *flash) clearStatus() { f.status = status{seq: f.status.seq} }

// tick fades a note after d.
func (f *flash) tick(now time.Time, d time.Duration) {
	if s := f.status; s.text != "" && !s.isErr && !s.pending && now.Sub(s.at) >= d {
		f.clearStatus()
	}
}

// claimed opens the banner for a claim made by request seq; false when a
// newer claim's banner is already up.
func (f *flash) claimed(seq int, id, url string, expires time.Time) bool {
	if seq <= f.banner.seq {
		return false
	}
	f.banner = banner{seq: seq, id: id, url: url, expires: expires}
	return true
}

func (f *flash) copied(seq int, err error) {
	if seq != f.banner.seq {
		return
	}
	f.banner.sent = err == nil
	if err != nil {
		f.banner.copyErr = err.Error()
	}
}

// sandboxEnded stops the banner's countdown when its sandbox ended.
func (f *flash) sandboxEnded(id, why string) {
	if f.banner.id != "" && f.banner.id == id && f.banner.ended == "" {
		f.banner.ended = why
	}
}

func (f *flash) closeBanner() { f.banner = banner{seq: f.banner.seq} }

// bannerView is the banner line (without the ✓ prefix style), or "".
func (f *flash) bannerView(st *styles, now time.Time, w int) string {
	b := f.banner
	if b.id == "" {
		return ""
	}
	var tail []string
	switch {
	case b.ended != "":
		tail = append(tail, st.Warning.wrap(b.ended))
	case !b.expires.IsZero():
		tail = append(tail, st.Faint.wrap(fmtClock(b.expires.Sub(now))+" left"))
	}
	switch {
	case b.sent:
		tail = append(tail, st.Faint.wrap("URL sent to clipboard"))
	case b.copyErr != "":
		tail = append(tail, st.Faint.wrap("not sent to clipboard: "+b.copyErr))
	}
	head := st.Banner.wrap("✓ claimed ") + b.id + "  " + b.url
	right := strings.Join(tail, st.Faint.wrap(" · "))
	// The id and URL matter most: the rest goes when space is short.
	if width(head)+2+width(right) > w {
		return truncate(head, w)
	}
	return head + "  " + right
}

func (f *flash) statusView(st *styles, w int) string {
	s := f.status
	switch {
	case s.text == "":
		return ""
	case s.isErr:
		return truncate(st.Danger.wrap("✗ "+s.text), w)
	}
	return truncate(st.Info.wrap("• "+s.text), w)
}
