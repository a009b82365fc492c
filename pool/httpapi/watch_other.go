//go:build !unix

package httpapi

import (
	"context"
	"sync/atomic"
)

// watchesStarted counts the watches that started, for tests.
var watchesStarted atomic.Int64

// clientWatch: elsewhere a waiting claim runs until its timeout.
type clientWatch struct{}

func watchClient(*guardConn, context.CancelCauseFunc) *clientWatch { return nil }

func (*clientWatch) stop() {}
