package outcome

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
)

func TestTable(t *testing.T) {
	for _, tc := range []struct {
		err   error
		want  Outcome
		exit  int
		state string
	}{
		{nil, Success, 0, "success"},
		{fault.RolloutErr(errors.New("x")), Failed, 1, "failed"},
		{fault.InvalidErr(errors.New("x")), Invalid, 2, "failed"},
		{fmt.Errorf("wrapped: %w", fault.RefusedErr(errors.New("x"))), Refused, 3, "failed"},
		{errors.New("engine unreachable"), Error, 1, ""},
	} {
		o := Of(tc.err)
		if o != tc.want || o.Row().Exit != tc.exit || o.Row().CommitState != tc.state {
			t.Errorf("%v: %s %+v, want %s exit %d state %q", tc.err, o, o.Row(), tc.want, tc.exit, tc.state)
		}
	}
	for o := range rank {
		if _, ok := Table[o]; !ok {
			t.Errorf("%s has no row", o)
		}
	}
	if !Refused.Worse(Invalid) || !Invalid.Worse(Failed) || !Failed.Worse(Error) || Success.Worse(Standby) {
		t.Error("order of outcomes")
	}
}
