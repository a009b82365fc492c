package ui

import (
	"context"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Engine is everything the dashboard uses of the pool. *pool.Controller
// satisfies it; tests use a recording fake.
type Engine interface {
	// Snapshot returns the pool as the engine knows it now, without I/O.
	Snapshot() pool.Snapshot
	// Subscribe streams events until cancel is called; a slow reader misses
	// events rather than slowing the pool.
	Subscribe(buffer int) (events <-chan pool.Event, cancel func())
	// Claim takes one good sandbox out of the pool.
	Claim(ctx context.Context, o pool.ClaimOptions) (pool.Claimed, error)
	// Resize sets the target (and turns autosize off).
	Resize(ctx context.Context, n int) error
	// SetAutosize turns autosize on or off; it does no I/O.
	SetAutosize(on bool)
	// Terminate stops one sandbox of the pool (pooled, claimed or being created).
	Terminate(ctx context.Context, id string) error
	// Maintain runs one maintenance pass now.
	Maintain(ctx context.Context) error
	// Config is the pool's configuration (MaxSize, TTL, UseDuration, MaintainEvery...).
	Config() pool.Config
}

var _ Engine = (*pool.Controller)(nil)
