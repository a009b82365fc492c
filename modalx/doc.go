// Package modalx adapts the Modal Go SDK (github.com/modal-labs/libmodal/modal-go
// v0.7.0) to the engine's pool.Backend, pool.Store and pool.Leaser.
//
// RPCs that modal-go v0.7.0 makes for the calls used here (read from its source;
// the fake control plane in modalx/fakemodal implements exactly these):
//
//	modal.NewClientWithOptions     AuthTokenGet (at once; the JWT's exp claim is read,
//	                               refreshed 5 min before exp). Every RPC carries
//	                               x-modal-token-id/-secret; all but AuthTokenGet carry
//	                               x-modal-auth-token. Unavailable/Internal/Unknown/
//	                               DeadlineExceeded/Canceled are retried 3 times.
//	Apps.FromName                  AppGetOrCreate (CREATE_IF_MISSING)
//	Image.Build (from Create)      ImageGetOrCreate ("FROM <tag>"); if no result yet,
//	                               ImageJoinStreaming (server stream) until a result
//	Sandboxes.Create               [Image.Build] + SandboxCreate
//	Sandbox.Tunnels                SandboxGetTunnels
//	Sandbox.SetTags / GetTags      SandboxTagsSet / SandboxTagsGet
//	Sandboxes.List                 SandboxList, paged by BeforeTimestamp until an empty page
//	Sandboxes.FromID, Sandbox.Poll SandboxWait (timeout 0)
//	Sandbox.Terminate              SandboxTerminate (Detach makes no RPC)
//	Queues.FromName / Delete       QueueGetOrCreate / QueueDelete
//	Queue.Put / PutMany            QueuePut (retried on ResourceExhausted = full)
//	Queue.Get / GetMany            QueueGet (polls until a value or the timeout)
//	Queue.Len                      QueueLen
//	Queue.Iterate                  QueueNextItems, until an empty answer after the poll timeout
//	Queue.Clear                    QueueClear
//	(Queues.Ephemeral only)        QueueHeartbeat
package modalx
