package modalx

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/pool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a Modal failure as one line: what was being done and why.
type Error struct {
	Doing  string // e.g. "creating a sandbox in app x"
	Reason string // one line, never holding a token secret
	Err    error  // the SDK's error
}

func (e *Error) Error() string { return "modal: " + e.Doing + ": " + e.Reason }
func (e *Error) Unwrap() error { return e.Err }

// Kinds of failure, for errors.Is.
var (
	ErrNoCredentials = errors.New("no Modal credentials")
	ErrTokenRejected = errors.New("Modal token rejected")
	ErrUnreachable   = errors.New("Modal server unreachable")
	ErrQuota         = errors.New("refused by Modal")
	ErrImage         = errors.New("image build failed")
	ErrTimeout       = errors.New("Modal server did not answer in time")
	ErrNotFound      = errors.New("not found by Modal")
)

// Kind names the kind of a Modal error in one word, for counting and
// alerting ("unreachable", "timeout", "token", "credentials", "quota",
// "image", "not_found"); "" when it is none of those.
func Kind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{{ErrUnreachable, "unreachable"}, {ErrTimeout, "timeout"}, {ErrTokenRejected, "token"},
		{ErrNoCredentials, "credentials"}, {ErrQuota, "quota"}, {ErrImage, "image"}, {ErrNotFound, "not_found"}} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return ""
}

type kindError struct {
	err  *Error
	kind error
}

func (k kindError) Error() string { return k.err.Error() }
func (k kindError) Is(target error) bool {
	// Something Modal does not know is, to the engine, a sandbox that is gone.
	return target == k.kind || (k.kind == ErrNotFound && target == pool.ErrNotFound)
}
func (k kindError) Unwrap() error { return k.err }

// wrap turns an SDK error into one clear line that says what was being done.
func wrap(doing string, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	e := &Error{Doing: doing, Err: err}
	kind := error(nil)
	var remote modal.RemoteError
	var gs interface{ GRPCStatus() *status.Status }
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		kind = ErrTimeout
		e.Reason = "no answer from the Modal server at " + serverURL() + " in time"
	case errors.Is(err, context.Canceled):
		e.Reason = err.Error()
	case strings.Contains(err.Error(), "missing token_id or token_secret"):
		kind = ErrNoCredentials
		e.Reason = "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` to write ~/.modal.toml"
	case errors.As(err, &remote):
		e.Reason = remote.Exception
		if strings.HasPrefix(remote.Exception, "Image build") {
			// "Image build for im-… failed with the exception:\n<why>": keep the why.
			kind = ErrImage
			if _, why, ok := strings.Cut(remote.Exception, "exception:"); ok {
				e.Reason = "the build failed: " + why
			}
		}
	case errors.As(err, &gs):
		st := gs.GRPCStatus()
		e.Reason = st.Message()
		switch st.Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			kind = ErrTokenRejected
			e.Reason = "Modal rejected the token " + tokenIDHint() + "(check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml): " + st.Message()
		case codes.Unavailable:
			kind = ErrUnreachable
			e.Reason = "cannot reach the Modal server at " + serverURL() + ": " + dialReason(st.Message())
		case codes.DeadlineExceeded:
			kind = ErrTimeout
			e.Reason = "no answer from the Modal server at " + serverURL() + " in time: " + st.Message()
		case codes.NotFound:
			kind = ErrNotFound
		case codes.ResourceExhausted:
			kind = ErrQuota
			e.Reason = "refused by Modal (quota or limit reached): " + st.Message()
		}
	default:
		e.Reason = err.Error()
	}
	e.Reason = oneLine(e.Reason)
	if kind != nil {
		return kindError{e, kind}
	}
	return e
}

func tokenIDHint() string {
	if id := os.Getenv("MODAL_TOKEN_ID"); id != "" {
		return id + " "
	}
	return ""
}

func serverURL() string {
	if u := os.Getenv("MODAL_SERVER_URL"); u != "" {
		return u
	}
	return "https://api.modal.com:443"
}

// dialReason keeps the useful end of gRPC's nested transport message.
func dialReason(msg string) string {
	if i := strings.Index(msg, "dial tcp"); i >= 0 {
		return strings.TrimRight(msg[i:], `"`)
	}
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		return strings.Trim(msg[i+len("desc = "):], `"`)
	}
	return msg
}

var (
	spaces = regexp.MustCompile(`\s+`)
	// Modal token secrets start with "as-"; never print one.
	secretLike = regexp.MustCompile(`\bas-[A-Za-z0-9_-]{4,}`)
)

// oneLine flattens a message, drops any token secret and bounds its length.
func oneLine(s string) string {
	if sec := os.Getenv("MODAL_TOKEN_SECRET"); sec != "" {
		s = strings.ReplaceAll(s, sec, "***")
	}
	s = secretLike.ReplaceAllString(s, "as-***")
	s = strings.TrimSpace(spaces.ReplaceAllString(s, " "))
	if len(s) > 300 {
		s = s[:297] + "..."
	}
	return s
}

// isNotFound reports a sandbox (or object) that Modal does not know.
func isNotFound(err error) bool {
	var nf modal.NotFoundError
	if errors.As(err, &nf) {
		return true
	}
	var gs interface{ GRPCStatus() *status.Status }
	return errors.As(err, &gs) && gs.GRPCStatus().Code() == codes.NotFound
}
