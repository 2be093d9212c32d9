package bullmq

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Job is one BullMQ job, as stored in its hash <prefix>:<queue>:<id>.
//
// A Job handed to a Handler belongs to that call; its methods may be called
// from the handler's goroutine and others, but its fields must not be
// changed concurrently.
type Job struct {
	// ID is the job id: a counter value or the custom JobOptions.JobID.
	ID string
	// Name is the job name given to Add.
	Name string
	// Data is the job data as stored: valid JSON.
	Data json.RawMessage
	// Opts is the raw JSON of the stored job options.
	Opts json.RawMessage
	// AttemptsMade counts finished attempts (atm); AttemptsStarted counts
	// fetches (ats).
	AttemptsMade    int
	AttemptsStarted int
	// Attempts is the attempts option (0 or 1: one attempt).
	Attempts int
	// Priority is the job's priority (0: none).
	Priority int
	// Delay is the job's current delay (its backoff, on a retry).
	Delay time.Duration
	// Timestamp is when the job was created.
	Timestamp time.Time
	// ProcessedOn and FinishedOn are zero until set.
	ProcessedOn time.Time
	FinishedOn  time.Time
	// Progress is the last progress value (JSON), nil if none.
	Progress json.RawMessage
	// ReturnValue is the stored result (JSON) of a completed job.
	ReturnValue json.RawMessage
	// FailedReason is the message of the last failed attempt.
	FailedReason string
	// Stacktrace holds the stack traces of failed attempts, oldest first.
	Stacktrace []string
	// StalledCount is how often the job was found stalled.
	StalledCount int
	// RepeatJobKey names the Node job scheduler that produced the job.
	RepeatJobKey string
	// ProcessedBy is the name of the worker that fetched it last.
	ProcessedBy string
	// Duplicate is set on a Job returned by Add when a job with the same
	// custom id existed already, or another job held its deduplication id:
	// nothing was written and ID is the existing job's.
	Duplicate bool

	token    string
	w        *Worker // the worker that holds the job, if any
	moved    bool    // moved out of active by the handler (MoveTo...)
	deferred string  // defa: a deferred failure reason
	opts     storedOpts
	q        *keys
	rdb      redis.UniversalClient
	owner    string
}

// Token returns the lock token under which the current worker holds the job
// ("" for a job not fetched by a worker).
func (j *Job) Token() string { return j.token }

func parseMillis(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(int64(f))
}

func atoi(s string) int {
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0
		}
		return int(f)
	}
	return n
}

// jobFromHash builds a Job from the fields of its hash.
func jobFromHash(id string, h map[string]string) *Job {
	j := &Job{
		ID:              id,
		Name:            h["name"],
		AttemptsMade:    atoi(h["atm"]),
		AttemptsStarted: atoi(h["ats"]),
		Priority:        atoi(h["priority"]),
		Delay:           time.Duration(atoi(h["delay"])) * time.Millisecond,
		Timestamp:       parseMillis(h["timestamp"]),
		ProcessedOn:     parseMillis(h["processedOn"]),
		FinishedOn:      parseMillis(h["finishedOn"]),
		FailedReason:    h["failedReason"],
		StalledCount:    atoi(h["stc"]),
		RepeatJobKey:    h["rjk"],
		ProcessedBy:     h["pb"],
		deferred:        h["defa"],
	}
	if _, ok := h["atm"]; !ok {
		j.AttemptsMade = atoi(h["attemptsMade"]) // legacy field
	}
	if d, ok := h["data"]; ok && d != "" {
		j.Data = json.RawMessage(d)
	} else {
		j.Data = json.RawMessage("{}")
	}
	if o := h["opts"]; o != "" {
		j.Opts = json.RawMessage(o)
		_ = json.Unmarshal([]byte(o), &j.opts)
		j.Attempts = j.opts.Attempts
	}
	if p, ok := h["progress"]; ok {
		j.Progress = json.RawMessage(p)
	}
	if r, ok := h["returnvalue"]; ok {
		j.ReturnValue = json.RawMessage(r)
	}
	if st := h["stacktrace"]; st != "" {
		var traces []string
		if json.Unmarshal([]byte(st), &traces) == nil {
			j.Stacktrace = traces
		}
	}
	return j
}

// jobFromFlat builds a Job from HGETALL's flat reply inside a script result.
func jobFromFlat(id string, flat []any) *Job {
	h := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		h[k] = v
	}
	return jobFromHash(id, h)
}

// UpdateProgress stores progress (encoded with encoding/json; a
// json.RawMessage must be valid JSON) in the job's hash and emits a
// `progress` event that Node's QueueEvents delivers.
func (j *Job) UpdateProgress(ctx context.Context, progress any) error {
	if j.rdb == nil || j.q == nil {
		return fmt.Errorf("bullmq: job %s has no queue", j.ID)
	}
	b, err := encodeJSON(progress)
	if err != nil {
		return fmt.Errorf("bullmq: progress of job %s: %w", j.ID, err)
	}
	ctx = ownerCtx(ctx, j.owner)
	code, err := progressScript.Run(ctx, j.rdb, j.q.all, j.q.base, j.ID, string(b)).Int64()
	if err != nil {
		return fmt.Errorf("bullmq: progress of job %s: %w", j.ID, err)
	}
	if code < 0 {
		return scriptError(code, j.ID, "progress")
	}
	j.Progress = b
	return nil
}

// Log appends a line to the job's log (the <job>:logs list Node's
// Queue.getJobLogs reads), keeping the last opts.keepLogs lines when the job
// has that option. It returns the number of lines kept.
func (j *Job) Log(ctx context.Context, line string) (int, error) {
	if j.rdb == nil || j.q == nil {
		return 0, fmt.Errorf("bullmq: job %s has no queue", j.ID)
	}
	n, err := logScript.Run(ownerCtx(ctx, j.owner), j.rdb, j.q.all, j.q.base, j.ID, line).Int64()
	if err != nil {
		return 0, fmt.Errorf("bullmq: log of job %s: %w", j.ID, err)
	}
	if n < 0 {
		return 0, scriptError(n, j.ID, "log")
	}
	return int(n), nil
}

// encodeJSON encodes v with encoding/json; a json.RawMessage (or
// *json.RawMessage) must be valid JSON and is kept as is; nil becomes null.
func encodeJSON(v any) ([]byte, error) {
	switch r := v.(type) {
	case json.RawMessage:
		if !json.Valid(r) {
			return nil, fmt.Errorf("%w: json.RawMessage is not valid JSON", ErrInvalidOptions)
		}
		return r, nil
	case *json.RawMessage:
		if r == nil {
			return []byte("null"), nil
		}
		return encodeJSON(*r)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOptions, err)
	}
	return b, nil
}
