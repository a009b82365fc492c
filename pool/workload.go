package pool

import (
	"fmt"
	"sync"
)

// opWorkload: the pool's stored workload could not be used here.
const opWorkload = "workload"

// workloadFollow orders the loads that apply the stored workload to the
// backend (followWorkload runs after a load, outside mu: an older load
// finishing last must not undo a newer one).
type workloadFollow struct {
	mu  sync.Mutex // held across UseWorkload, a field's assignment
	seq uint64     // the newest load applied
}

// followWorkload makes this process create what the pool's sandboxes run
// (Stored.Workload, as its controller stored it), whatever flags this
// process was given: one that takes the pool over or backfills it would
// otherwise create its own (a dashboard's built-in servers in a pool of
// --cmd workloads). seq is the load's loadSeq. A change is said in an
// event.
func (c *Controller) followWorkload(seq uint64, stored string) {
	wb, ok := c.be.(WorkloadBackend)
	if !ok || stored == "" {
		return
	}
	f := &c.workload
	f.mu.Lock()
	if seq < f.seq {
		f.mu.Unlock()
		return
	}
	f.seq = seq
	was := wb.Workload()
	if was == stored {
		f.mu.Unlock()
		return
	}
	err := wb.UseWorkload(stored)
	f.mu.Unlock()
	if err != nil {
		c.report(ProblemBackend, opWorkload, "", fmt.Errorf("the pool's sandboxes run a workload this build cannot read (%w): creating %s instead", err, wb.DescribeWorkload(was)))
		return
	}
	c.resolve(ProblemBackend, opWorkload)
	c.emit(Event{Kind: EventWorkload, Message: fmt.Sprintf("the pool's workload is %s now (was %s), as its controller stored it: new sandboxes run that", wb.DescribeWorkload(stored), wb.DescribeWorkload(was))})
}
