package testkit

import "go.uber.org/goleak"

// ignored are goroutines that never end and are not ours.
var ignored = []goleak.Option{
	// teatest's interrupt watcher outlives every test model.
	goleak.IgnoreTopFunction("github.com/charmbracelet/x/exp/teatest.NewTestModel.func2"),
	// fasthttp refreshes its Date header once a second, for the process.
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	// A fasthttp client's idle-connection cleaner (claimload's) ends one
	// idle period after its last connection closed, minutes later.
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
}

// Main runs the tests of m and, when they pass, fails the binary if any
// goroutine is still running (every goroutine has an owner that stops it),
// ignoring the known ones above and opts. Call it from TestMain, after
// anything that re-executes the test binary as a child.
func Main(m goleak.TestingM, opts ...goleak.Option) {
	goleak.VerifyTestMain(m, append(append([]goleak.Option{}, ignored...), opts...)...)
}

// Teardown wraps m so that fn runs after the tests and before Main looks
// for leaks: for what TestMain itself set up (a built binary, a server the
// benchmarks share).
func Teardown(m goleak.TestingM, fn func()) goleak.TestingM { return teardown{m, fn} }

type teardown struct {
	m  goleak.TestingM
	fn func()
}

func (t teardown) Run() int {
	defer t.fn()
	return t.m.Run()
}
