package pool

import (
	"strings"
	"testing"
	"time"
)

// TestPauseTextAddsUp: the budget's pause says what was created against
// what the window explains, with every term of the budget, so the numbers
// add up; a budget used up exactly is not "only N of N".
func TestPauseTextAddsUp(t *testing.T) {
	in := BudgetInput{Window: 3 * time.Minute, Target: 3, Claims: 1, Lost: 2, Failed: 1, GoodLife: 3 * time.Minute}
	budget := CreationBudget(in) // 3 + 1 + 2 + 1 + 3 rotations + slack 2
	if budget != 12 {
		t.Fatalf("budget %d, want 12", budget)
	}
	resume := time.Date(2026, 12, 2, 12, 3, 0, 0, time.UTC)
	for _, tc := range []struct {
		created int
		want    string
	}{
		{12, "12 created in the last 3m0s, all 12 that the window explains (a fill to the target of 3, 1 claims, 2 lost, 1 failed tries, 3 rotations, slack 2); resumes at 12:03:00"},
		{14, "14 created in the last 3m0s, more than the 12 that the window explains"},
	} {
		got := pauseText(tc.created, in, resume)
		if !strings.Contains(got, tc.want) || strings.Contains(got, "only") {
			t.Errorf("created %d: %q, want it to say %q", tc.created, got, tc.want)
		}
	}
}
