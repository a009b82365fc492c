// Package ui is sandboxpool's live terminal dashboard: a Bubble Tea (v1)
// program over the pool engine.
//
// The shape: one root Model with an explicit mode machine (normal, filter,
// prompt, confirm, detail, help); keys are data (keys.go) and the help line and
// the ? overlay are built from them; every style is built once (styles.go);
// time comes from an injected clock and is formatted by pure helpers
// (format.go). Update never blocks: every engine call runs in a tea.Cmd and
// comes back as a typed message carrying a sequence number (commands.go), and
// engine events arrive through a channel-listening Cmd re-armed after each
// batch, so claims made through the API or sandboxes dying show at once.
package ui
