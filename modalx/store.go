package modalx

import modal "github.com/modal-labs/libmodal/modal-go"

// Store is a pool's durable references in a Modal Queue.
type Store struct {
	c *core
	q *modal.Queue
}

// Close releases the Store's share of the Modal client.
func (s *Store) Close() error { s.c.release(); return nil }
