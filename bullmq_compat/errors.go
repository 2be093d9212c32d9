package bullmq

import (
	"errors"
	"fmt"
)

// ErrQueueFull is returned by Queue.Add and Queue.AddBulk when the queue
// already holds QueueOptions.MaxQueueDepth waiting, prioritized and delayed
// jobs. Nothing is written in that case.
var ErrQueueFull = errors.New("bullmq: queue full")

// ErrInvalidJobID is returned (wrapped) by Add for a custom job id that
// Node's BullMQ would reject: "0", ids starting with "0:", integer-like ids,
// and ids with ':' that do not split into exactly three parts.
var ErrInvalidJobID = errors.New("bullmq: invalid job id")

// ErrInvalidOptions is returned (wrapped) by constructors and Add for an
// option value outside its range, e.g. a negative delay or a priority above
// MaxPriority.
var ErrInvalidOptions = errors.New("bullmq: invalid options")

// ErrClosed is returned by calls on a Queue, Worker or QueueEvents after Close.
var ErrClosed = errors.New("bullmq: closed")

// ErrJobNotFound is returned when a job's hash does not exist.
var ErrJobNotFound = errors.New("bullmq: job not found")

// ErrLockMismatch is returned when a job's lock is missing or held by
// another token, so the worker no longer owns the job (it was probably
// moved back to wait by a stalled check).
var ErrLockMismatch = errors.New("bullmq: job lock lost")

// errUnrecoverable marks an error that must not be retried.
type unrecoverableError struct{ err error }

func (e *unrecoverableError) Error() string { return e.err.Error() }
func (e *unrecoverableError) Unwrap() error { return e.err }

// Unrecoverable wraps err so that a Worker fails the job at once, without
// the retries its attempts option would allow (Node's UnrecoverableError).
// Unrecoverable(nil) returns nil.
func Unrecoverable(err error) error {
	if err == nil {
		return nil
	}
	return &unrecoverableError{err: err}
}

// IsUnrecoverable reports whether err, or an error it wraps, was made by
// Unrecoverable.
func IsUnrecoverable(err error) bool {
	var u *unrecoverableError
	return errors.As(err, &u)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...)
}

// scriptError turns a negative return code of a finishing script into an error.
func scriptError(code int64, jobID, op string) error {
	switch code {
	case -1:
		return fmt.Errorf("%w: %s (%s)", ErrJobNotFound, jobID, op)
	case -2:
		return fmt.Errorf("%w: job %s: lock missing (%s)", ErrLockMismatch, jobID, op)
	case -6:
		return fmt.Errorf("%w: job %s: lock held by another worker (%s)", ErrLockMismatch, jobID, op)
	case -3:
		return fmt.Errorf("bullmq: job %s is not in the active list (%s)", jobID, op)
	case -4:
		return fmt.Errorf("bullmq: job %s has pending children (%s)", jobID, op)
	case -9:
		return fmt.Errorf("bullmq: job %s has failed children (%s)", jobID, op)
	default:
		return fmt.Errorf("bullmq: %s of job %s: script code %d", op, jobID, code)
	}
}
