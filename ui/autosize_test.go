package ui

import (
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

func TestHeaderSaysWhyTheTargetIsWhatItIs(t *testing.T) {
	d := newDriver(t, Options{})
	d.f.set(func(s *pool.Snapshot) {
		s.Target = 7
		s.Autosize = pool.AutosizeStatus{On: true, Rate: 3.1, TimeToReady: 1400 * time.Millisecond}
		s.Cost = pool.Cost{PricePerHour: 0.1, Sandboxes: 7, IdleSeconds: 3600}
	})
	d.refresh()
	d.wantScreen("target 7 (auto: 3.1 claims/s x 1.4 s)", "cost 0.700/h, idle 0.100")
}

func TestAKeyTurnsAutosizeBackOn(t *testing.T) {
	d := newDriver(t, Options{})
	d.keys("a")
	d.wantCalls("autosize true")
	d.wantScreen("autosize on: the target follows demand")

	ro := newDriver(t, Options{ReadOnly: true})
	ro.keys("a")
	ro.wantCalls()
}

func TestHeaderSaysAWorkloadIsBeingReplaced(t *testing.T) {
	d := newDriver(t, Options{})
	d.f.set(func(s *pool.Snapshot) {
		s.Rollout = pool.RolloutStatus{From: "--cmd a", Old: 3, Replacing: 1}
	})
	d.refresh()
	d.wantScreen("replacing old workload: 3 left")
}
