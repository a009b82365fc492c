package ui

import (
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

func TestFmtClock(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0:00", 0: "0:00", 999 * time.Millisecond: "0:00", time.Second: "0:01",
		59 * time.Second: "0:59", time.Minute: "1:00", 4*time.Minute + 59*time.Second + 900*time.Millisecond: "4:59",
		5 * time.Minute: "5:00", 75 * time.Minute: "75:00",
	} {
		if got := fmtClock(d); got != want {
			t.Errorf("fmtClock(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestFmtAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 42 * time.Second: "42s", 4*time.Minute + 5*time.Second: "4m05s", 42 * time.Minute: "42m",
		3*time.Hour + 5*time.Minute: "3h05m", 50 * time.Hour: "2d",
	} {
		if got := fmtAge(d); got != want {
			t.Errorf("fmtAge(%s) = %q, want %q", d, got, want)
		}
		if len(fmtAge(d)) > ageW {
			t.Errorf("fmtAge(%s) is wider than the column", d)
		}
	}
}

func TestHealthText(t *testing.T) {
	at := t0
	for _, tc := range []struct {
		h    pool.Health
		want string
	}{
		{pool.Health{}, "–"},
		{pool.Health{OK: true, Status: 200, Latency: time.Millisecond, CheckedAt: at}, "ok 200 1ms"},
		{pool.Health{OK: true, Status: 204, Latency: 300 * time.Microsecond, CheckedAt: at}, "ok 204 <1ms"},
		{pool.Health{OK: true, Status: 302, Latency: 1234 * time.Millisecond, CheckedAt: at}, "ok 302 1.2s"},
		{pool.Health{Error: "timeout", CheckedAt: at}, "timeout"},
		{pool.Health{Error: "refused", CheckedAt: at}, "refused"},
		{pool.Health{Status: 500, Error: "500", CheckedAt: at}, "500"},
		{pool.Health{Status: 503, CheckedAt: at}, "503"},
	} {
		if got := healthText(tc.h); got != tc.want {
			t.Errorf("healthText(%+v) = %q, want %q", tc.h, got, tc.want)
		}
	}
}

// The bar is amber under use-duration + 1m and red under use-duration; the
// boundaries themselves are the better colour.
func TestBarColourBoundaries(t *testing.T) {
	use := 2 * time.Minute
	for _, tc := range []struct {
		left time.Duration
		want int
	}{
		{5 * time.Minute, barOK},
		{use + time.Minute, barOK},
		{use + time.Minute - time.Nanosecond, barAmber},
		{use, barAmber},
		{use - time.Nanosecond, barRed},
		{0, barRed},
	} {
		if got := barColour(tc.left, use); got != tc.want {
			t.Errorf("barColour(%s) = %d, want %d", tc.left, got, tc.want)
		}
	}
}

func TestBarFill(t *testing.T) {
	ttl := 5 * time.Minute
	for _, tc := range []struct {
		left time.Duration
		want int
	}{
		{ttl, barW}, {2 * ttl, barW}, {ttl - time.Second, barW}, {ttl / 2, 3},
		{time.Second, 1}, {0, 0}, {-time.Second, 0},
	} {
		if got := barFill(tc.left, ttl); got != tc.want {
			t.Errorf("barFill(%s) = %d, want %d", tc.left, got, tc.want)
		}
	}
}

func TestFit(t *testing.T) {
	for _, tc := range []struct {
		s    string
		w    int
		want string
	}{
		{"abc", 5, "abc  "}, {"abcdef", 4, "abc…"}, {"abc", 3, "abc"}, {"abc", 0, ""},
		{"● ready", 9, "● ready  "}, {"●●●●", 3, "●●…"},
	} {
		if got := fit(tc.s, tc.w); got != tc.want {
			t.Errorf("fit(%q, %d) = %q, want %q", tc.s, tc.w, got, tc.want)
		}
	}
	if got := displayURL("http://127.0.0.1:40123", 16); got != "127.0.0.1:40123 " {
		t.Errorf("displayURL dropped nothing: %q", got)
	}
	if got := displayURL("http://127.0.0.1:40123", 30); got != "http://127.0.0.1:40123        " {
		t.Errorf("displayURL cut a URL that fits: %q", got)
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  string
	}{
		{"0", 0, ""}, {" 7 ", 7, ""}, {"100", 100, ""},
		{"101", 0, "101: the target cannot be above 100 (--max-size)"},
		{"-1", 0, "-1: the target cannot be below 0"},
		{"1.5", 0, `"1.5" is not a whole number: type 0 to 100`},
		{"", 0, "type a number from 0 to 100"},
	} {
		n, err := parseTarget(tc.in, 100)
		if (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) || n != tc.want {
			t.Errorf("parseTarget(%q) = %d, %v; want %d, %q", tc.in, n, err, tc.want, tc.err)
		}
	}
}

// TestReadOnlyDropsEveryPoolChangingKey: the key map marks them, in one place.
func TestReadOnlyDropsEveryPoolChangingKey(t *testing.T) {
	k := newKeyMap()
	k.setReadOnly(true)
	for _, b := range k.changesPool() {
		if b.Enabled() {
			t.Errorf("%s still enabled", b.Help().Key)
		}
	}
	if !k.Up.Enabled() || !k.Filter.Enabled() || !k.Detail.Enabled() || !k.Quit.Enabled() {
		t.Error("read-only dropped a key that only watches")
	}
}
