package filestore

import (
	"bytes"
	"testing"
)

// FuzzDecode: every input decodes or errors, never panics; what decodes
// survives an encode/decode round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[]}`))
	f.Add([]byte(`{"version":1,"target":3,"entries":[{"id":"a","url":"http://127.0.0.1:1","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:05:00Z","claimed_by":"cli","claimed_at":"2030-01-01T00:01:00+02:00"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decode(data)
		if err != nil {
			return
		}
		var first, second bytes.Buffer
		if err := encode(&first, st); err != nil {
			t.Fatalf("encode of a decoded file: %v", err)
		}
		again, err := decode(first.Bytes())
		if err != nil {
			t.Fatalf("re-decode: %v\n%s", err, first.Bytes())
		}
		if err := encode(&second, again); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.Bytes(), second.Bytes()) {
			t.Fatalf("round trip changed the file:\n%s\n%s", first.Bytes(), second.Bytes())
		}
	})
}
