package httpapi

// WatchesStarted is how many waiting claims have watched their connection.
func WatchesStarted() int64 { return watchesStarted.Load() }
