package plainjson

import (
	"encoding/json"
	"testing"
	"time"
)

func TestPlainStringsAndTimesAreWhatEncodingJSONWrites(t *testing.T) {
	for _, s := range []string{"", "sb-1", "api 127.0.0.1:5555", "http://h/?a=1&b=<2>", `q"`, `b\`, "naïve", "\u2028", "\x7f", "\t", "~!@#$%^*()_+{}|:?/.,;'[]=-`"} {
		for _, html := range []bool{false, true} {
			var want []byte
			if html {
				want, _ = json.Marshal(s)
			} else {
				want = encodeNoHTML(t, s)
			}
			got := AppendString(nil, s)
			if Plain(s, html) && string(got) != string(want) {
				t.Errorf("Plain(%q, %v) but %s, want %s", s, html, got, want)
			}
			if !Plain(s, html) && string(got) == string(want) && s != "" {
				t.Logf("Plain(%q, %v) false: the encoder's way (it writes it unchanged too)", s, html)
			}
		}
	}
	at := time.Date(2026, 12, 2, 13, 0, 0, 123456789, time.UTC)
	for _, tm := range []time.Time{at, at.Truncate(time.Second), time.Time{}, at.In(time.FixedZone("x", -(3*3600 + 30*60))),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		at.In(time.FixedZone("odd", 3600+7))} {
		want, err := json.Marshal(tm)
		if Time(tm) && (err != nil || string(AppendTime(nil, tm)) != string(want)) {
			t.Errorf("AppendTime(%v) = %s, want %s", tm, AppendTime(nil, tm), want)
		}
	}
}

func TestUsualTimesArePlain(t *testing.T) {
	at := time.Date(2026, 12, 2, 13, 0, 0, 123456789, time.UTC)
	if !Time(at) || !Time(time.Time{}) || !Time(at.In(time.FixedZone("x", 5*3600+45*60))) || Time(at.AddDate(8000, 0, 0)) {
		t.Error("Time: a usual time is not plain, or year 10026 is")
	}
}

func encodeNoHTML(t *testing.T, s string) []byte {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	// Marshal escapes HTML: undo the three escapes for the comparison.
	out := []byte{}
	for i := 0; i < len(b); i++ {
		if i+6 <= len(b) && string(b[i:i+4]) == `\u00` {
			switch string(b[i+4 : i+6]) {
			case "3c":
				out, i = append(out, '<'), i+5
				continue
			case "3e":
				out, i = append(out, '>'), i+5
				continue
			case "26":
				out, i = append(out, '&'), i+5
				continue
			}
		}
		out = append(out, b[i])
	}
	return out
}
