package bullmq

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Defaults for the zero values of QueueOptions, WorkerOptions,
// QueueEventsOptions and FlowProducerOptions (Node's defaults).
const (
	DefaultPrefix                = "bull"
	DefaultConcurrency           = 1
	DefaultLockDuration          = 30 * time.Second
	DefaultStalledInterval       = 30 * time.Second
	DefaultMaxStalledCount       = 1
	DefaultDrainDelay            = 5 * time.Second
	DefaultMaximumRateLimitDelay = 30 * time.Second
	DefaultBlockTimeout          = 10 * time.Second
)

// MaxPriority is the highest job priority BullMQ accepts (2^21-1).
// Priority 1 runs first; 0 means no priority (the job goes to the plain
// wait list, ahead of every prioritized job).
const MaxPriority = 1<<21 - 1

// Backoff is the delay policy between the attempts of a failing job.
type Backoff struct {
	// Type is "fixed", "exponential" (the built-in strategies) or the name
	// of a custom strategy, which the worker's BackoffStrategy (Go) or
	// settings.backoffStrategy (Node) computes. Empty with a Delay means
	// "fixed", as in Node, where a numeric backoff becomes {type: "fixed"}.
	Type string
	// Delay is the fixed delay, or the base of the exponential one:
	// attempt n waits round(2^(n-1) * Delay). Millisecond resolution.
	Delay time.Duration
	// Jitter in [0, 1] randomizes the delay d to [d*(1-Jitter), d).
	Jitter float64
}

func (b Backoff) isZero() bool { return b.Type == "" && b.Delay == 0 && b.Jitter == 0 }

// KeepJobs is a retention policy for finished jobs (removeOnComplete /
// removeOnFail). Use RemoveJob, KeepAll, KeepLast or KeepFor to build one;
// a nil *KeepJobs leaves the decision to the worker's option (and, when that
// is nil too, keeps every job, as Node does).
type KeepJobs struct {
	// Count keeps the newest Count finished jobs; 0 with Age 0 removes the
	// job at once; a negative Count (with Age 0) keeps all.
	Count int
	// Age removes finished jobs older than Age (second resolution).
	Age time.Duration
	// Limit caps how many jobs one finish removes by age (0: Node's 1000).
	Limit int
}

// RemoveJob returns a policy that deletes the job as soon as it finishes
// (Node's `true`).
func RemoveJob() *KeepJobs { return &KeepJobs{} }

// KeepAll returns a policy that keeps every finished job (Node's `false`).
func KeepAll() *KeepJobs { return &KeepJobs{Count: -1} }

// KeepLast returns a policy that keeps the newest n finished jobs.
func KeepLast(n int) *KeepJobs {
	if n < 0 {
		n = 0
	}
	return &KeepJobs{Count: n}
}

// KeepFor returns a policy that keeps finished jobs for d.
func KeepFor(d time.Duration) *KeepJobs { return &KeepJobs{Count: -1, Age: d} }

// MarshalJSON encodes the policy the way Node stores it in a job's opts:
// true, false, a number, or {age, count, limit}.
func (k KeepJobs) MarshalJSON() ([]byte, error) {
	if k.Age == 0 {
		switch {
		case k.Count == 0:
			return []byte("true"), nil
		case k.Count < 0:
			return []byte("false"), nil
		default:
			return []byte(strconv.Itoa(k.Count)), nil
		}
	}
	m := map[string]any{"age": int64(math.Ceil(k.Age.Seconds()))}
	if k.Count >= 0 {
		m["count"] = k.Count
	}
	if k.Limit != 0 {
		m["limit"] = k.Limit
	}
	return json.Marshal(m)
}

// JobOptions are the options of one job. The zero value adds a plain job
// that is attempted once and kept after it finishes.
type JobOptions struct {
	// Delay postpones the job: it waits in the delayed set until then.
	// Millisecond resolution; zero or negative (stored as given, as Node
	// does) adds a ready job.
	Delay time.Duration
	// Priority 1..MaxPriority puts the job in the prioritized set (1 runs
	// first); 0 means none. Node also accepts negative priorities, which
	// run before priority 1; above MaxPriority is an error.
	Priority int
	// Attempts is how many times the job is tried in all (0, 1 and
	// negative values: once).
	Attempts int
	// Backoff is the delay between attempts.
	Backoff Backoff
	// JobID is a custom id. Adding a job whose id already exists writes
	// nothing and returns the existing id (Node's duplicate rule).
	JobID string
	// LIFO puts a plain job at the processing end of the wait list.
	LIFO bool
	// RemoveOnComplete and RemoveOnFail override the worker's retention
	// policy for this job.
	RemoveOnComplete *KeepJobs
	RemoveOnFail     *KeepJobs
	// StackTraceLimit keeps only the last n stack traces of failed attempts
	// (0: unlimited, as in Node when unset; a negative -n drops the oldest
	// n, as Node's slice(-limit) does).
	StackTraceLimit int
	// Timestamp is the job's creation time (zero: now).
	Timestamp time.Time
	// What a flow child's final failure does to its parent (at most one
	// may be set, as in Node): FailParentOnFailure fails the parent;
	// IgnoreDependencyOnFailure lets the parent go on once its other
	// children completed, recording the failure in the parent's :failed
	// hash (Node's getIgnoredChildrenFailures); ContinueParentOnFailure
	// releases the parent at once, recording the failure likewise (Node's
	// getFailedChildrenValues); RemoveDependencyOnFailure drops the
	// dependency without a trace. With none set the parent keeps waiting.
	FailParentOnFailure       bool
	IgnoreDependencyOnFailure bool
	ContinueParentOnFailure   bool
	RemoveDependencyOnFailure bool
	// Parent makes the job a child of an existing job (Node's opts.parent):
	// the parent's :dependencies set gets the job, and the parent-on-failure
	// options above apply. A handler adds children to its own job this way,
	// then calls Job.MoveToWaitingChildren. Add fails with ErrJobNotFound
	// when the parent does not exist. Not with Deduplication, and not in a
	// FlowProducer (which links children itself).
	Parent *ParentRef
	// Deduplication, when set, adds the job only if no job holds its
	// deduplication id (Node's modes: simple, TTL, extend, replace,
	// keepLastIfActive).
	Deduplication *Deduplication
}

// ParentRef names a parent job: its id and its queue's qualified name,
// "<prefix>:<queue name>" (Node's opts.parent {id, queue}; Queue.Qualified
// returns it).
type ParentRef struct {
	ID    string
	Queue string
}

// Deduplication is Node's deduplication option: while the job that took ID
// exists (and, with a TTL, for at most TTL), adds with the same ID write
// nothing and return that job's id. The id is released when the job
// finishes.
type Deduplication struct {
	ID  string
	TTL time.Duration // 0: until the job finishes; millisecond resolution
	// Extend (with a TTL): an add deduplicated by the holder restarts the
	// TTL.
	Extend bool
	// Replace: an add while the holder is still delayed removes the
	// holder and adds the new job in its place (the TTL is kept unless
	// Extend).
	Replace bool
	// KeepLastIfActive: an add while the holder is active is kept, the
	// last one replacing any earlier, and added when the holder finishes;
	// the deduplication id then lasts until the holder finishes.
	KeepLastIfActive bool
}

// validate accepts and rejects what Node 6.7's queue.add does (checked
// case by case against Node in TestAddValidationMatchesNode): a priority
// above MaxPriority, a jitter outside [0, 1], a deduplication without an
// id, more than one of the parent-on-failure options and the job ids
// ValidateJobID refuses are errors; negative delays, priorities,
// attempts, backoff delays, stack trace limits and retention values are
// accepted and stored as given, as Node stores them.
func (o *JobOptions) validate() error {
	if o.Priority > MaxPriority {
		return invalidf("Priority %d above %d", o.Priority, MaxPriority)
	}
	if o.Backoff.Jitter < 0 || o.Backoff.Jitter > 1 {
		return invalidf("Backoff.Jitter %v outside [0, 1]", o.Backoff.Jitter)
	}
	if d := o.Deduplication; d != nil && d.ID == "" {
		return invalidf("Deduplication needs an ID")
	}
	if p := o.Parent; p != nil {
		if p.ID == "" || p.Queue == "" {
			return invalidf("Parent needs an ID and a Queue, got %+v", *p)
		}
		if o.Deduplication != nil {
			return invalidf("Deduplication and Parent cannot be used together")
		}
	}
	var exclusive []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{o.RemoveDependencyOnFailure, "RemoveDependencyOnFailure"},
		{o.FailParentOnFailure, "FailParentOnFailure"},
		{o.ContinueParentOnFailure, "ContinueParentOnFailure"},
		{o.IgnoreDependencyOnFailure, "IgnoreDependencyOnFailure"},
	} {
		if f.set {
			exclusive = append(exclusive, f.name)
		}
	}
	if len(exclusive) > 1 {
		return invalidf("%s cannot be used together", strings.Join(exclusive, ", "))
	}
	if o.JobID != "" {
		if err := ValidateJobID(o.JobID); err != nil {
			return err
		}
	}
	return nil
}

// storedOpts is the JSON shape of a job's opts, as Node reads it.
type storedOpts struct {
	Attempts         int             `json:"attempts"`
	Delay            int64           `json:"delay,omitempty"`
	Priority         int             `json:"priority,omitempty"`
	Backoff          *storedBackoff  `json:"backoff,omitempty"`
	JobID            string          `json:"jobId,omitempty"`
	LIFO             bool            `json:"lifo,omitempty"`
	RemoveOnComplete json.RawMessage `json:"removeOnComplete,omitempty"`
	RemoveOnFail     json.RawMessage `json:"removeOnFail,omitempty"`
	StackTraceLimit  *int            `json:"stackTraceLimit,omitempty"`
	Timestamp        int64           `json:"timestamp,omitempty"`
	Dedup            *storedDedup    `json:"de,omitempty"`
	FPOF             bool            `json:"fpof,omitempty"`
	IDOF             bool            `json:"idof,omitempty"`
	CPOF             bool            `json:"cpof,omitempty"`
	RDOF             bool            `json:"rdof,omitempty"`
	// Parent is set on the children of flows: {id, queue}, queue being
	// "<prefix>:<queue name>".
	Parent *storedParent `json:"parent,omitempty"`
	// Repeat is only read (jobs of Node job schedulers).
	Repeat json.RawMessage `json:"repeat,omitempty"`
}

type storedParent struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
}

type storedDedup struct {
	ID               string `json:"id"`
	TTL              int64  `json:"ttl,omitempty"`
	Extend           bool   `json:"extend,omitempty"`
	Replace          bool   `json:"replace,omitempty"`
	KeepLastIfActive bool   `json:"keepLastIfActive,omitempty"`
}

type storedBackoff struct {
	Type   string  `json:"type"`
	Delay  int64   `json:"delay"`
	Jitter float64 `json:"jitter,omitempty"`
}

func (o *JobOptions) encode(ts int64, parent *storedParent) ([]byte, error) {
	s := storedOpts{
		Attempts: o.Attempts,
		Delay:    o.Delay.Milliseconds(),
		Priority: o.Priority,
		JobID:    o.JobID,
		LIFO:     o.LIFO,
	}
	if !o.Backoff.isZero() {
		t := o.Backoff.Type
		if t == "" {
			t = "fixed"
		}
		s.Backoff = &storedBackoff{Type: t, Delay: o.Backoff.Delay.Milliseconds(), Jitter: o.Backoff.Jitter}
		if math.IsNaN(s.Backoff.Jitter) {
			s.Backoff.Jitter = 0 // Node stores null: no jitter
		}
	}
	if !o.Timestamp.IsZero() {
		s.Timestamp = ts
	}
	if d := o.Deduplication; d != nil {
		s.Dedup = &storedDedup{ID: d.ID, TTL: d.TTL.Milliseconds(), Extend: d.Extend, Replace: d.Replace,
			KeepLastIfActive: d.KeepLastIfActive}
	}
	s.FPOF, s.IDOF = o.FailParentOnFailure, o.IgnoreDependencyOnFailure
	s.CPOF, s.RDOF = o.ContinueParentOnFailure, o.RemoveDependencyOnFailure
	s.Parent = parent
	if o.StackTraceLimit != 0 {
		n := o.StackTraceLimit
		s.StackTraceLimit = &n
	}
	var err error
	if o.RemoveOnComplete != nil {
		if s.RemoveOnComplete, err = json.Marshal(o.RemoveOnComplete); err != nil {
			return nil, err
		}
	}
	if o.RemoveOnFail != nil {
		if s.RemoveOnFail, err = json.Marshal(o.RemoveOnFail); err != nil {
			return nil, err
		}
	}
	return json.Marshal(s)
}

// delayFor computes the delay before attempt n (1-based count of
// attempts made so far), as Node's built-in strategies do. ok is false for
// a type that is not built in.
func (b storedBackoff) delayFor(n int) (d time.Duration, ok bool) {
	var ms float64
	switch b.Type {
	case "fixed":
		ms = float64(b.Delay)
	case "exponential":
		ms = math.Round(math.Pow(2, float64(n-1)) * float64(b.Delay))
	default:
		return 0, false
	}
	if b.Jitter > 0 && ms > 0 {
		lo := ms * (1 - b.Jitter)
		ms = math.Floor(lo + rand.Float64()*(ms-lo))
	}
	return time.Duration(ms) * time.Millisecond, true
}

// ValidateJobID reports whether Node's BullMQ accepts id as a custom job id.
// It returns an error wrapping ErrInvalidJobID for "0", ids starting with
// "0:", integer-like ids (where JavaScript's parseInt gives back the same
// string) and ids with ':' that do not split into exactly three parts.
func ValidateJobID(id string) error {
	switch {
	case id == "":
		return nil
	case id == "0" || strings.HasPrefix(id, "0:"):
		return jobIDError(id, "reserved")
	case integerLike(id):
		return jobIDError(id, "integer-like ids are reserved for generated ids")
	case strings.Contains(id, ":") && len(strings.Split(id, ":")) != 3:
		return jobIDError(id, "an id with ':' must have exactly three parts")
	}
	return nil
}

func jobIDError(id, why string) error {
	return &jobIDErr{id: id, why: why}
}

type jobIDErr struct{ id, why string }

func (e *jobIDErr) Error() string {
	return "bullmq: invalid job id " + strconv.Quote(e.id) + ": " + e.why
}
func (e *jobIDErr) Unwrap() error { return ErrInvalidJobID }

// integerLike mirrors Node's check String(parseInt(id, 10)) === id.
func integerLike(id string) bool {
	s := strings.TrimPrefix(id, "-")
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	v, err := strconv.ParseFloat(id, 64)
	if err != nil || math.IsInf(v, 0) || math.Abs(v) >= 1e21 {
		return false
	}
	if v == 0 {
		return id == "0"
	}
	return strconv.FormatFloat(v, 'f', -1, 64) == id
}

// QueueOptions configure a Queue. The zero value works.
type QueueOptions struct {
	// Prefix of every key (default DefaultPrefix, "bull"). For Redis Cluster put a hash
	// tag in it ("{bull}") or in the queue name, identically in Node.
	Prefix string
	// MaxQueueDepth makes Add fail with ErrQueueFull once waiting +
	// prioritized + delayed jobs reach it (0: unlimited).
	MaxQueueDepth int
}

// RateLimiter limits how many jobs a worker starts per Duration across all
// workers of the queue that use the same limiter (Node's limiter option).
// The queue-wide limit set by Node's Queue.setGlobalRateLimit (meta max /
// duration) takes precedence over it.
type RateLimiter struct {
	Max      int
	Duration time.Duration
}

// MetricsOptions configure a worker's metrics (Node's metrics option).
type MetricsOptions struct {
	// MaxDataPoints is how many per-minute counts are kept (Node's
	// maxDataPoints; a week is 7*24*60). 0 records no metrics.
	MaxDataPoints int
}

// WorkerOptions configure a Worker. The zero value works (Node's defaults).
type WorkerOptions struct {
	// Prefix of every key (default DefaultPrefix, "bull").
	Prefix string
	// Concurrency is how many jobs run at once (0: DefaultConcurrency, 1;
	// negative: error).
	Concurrency int
	// Name is the worker's name: stored in a job's `pb` field and in the
	// client name of the blocking connection.
	Name string
	// LockDuration is how long a job's lock lasts without renewal
	// (default DefaultLockDuration, 30s). Locks are renewed every LockDuration/4 while jobs run.
	LockDuration time.Duration
	// StalledInterval is the period of the stalled-job check (default
	// DefaultStalledInterval, 30s).
	StalledInterval time.Duration
	// MaxStalledCount is how often a job may stall before it fails
	// (0: DefaultMaxStalledCount, Node's 1; negative: error).
	MaxStalledCount int
	// DrainDelay is the longest blocking wait on an empty queue (default
	// DefaultDrainDelay, 5s).
	DrainDelay time.Duration
	// Limiter rate-limits the jobs this worker starts (zero: none).
	Limiter RateLimiter
	// MaximumRateLimitDelay caps one wait for the rate limiter (default
	// DefaultMaximumRateLimitDelay, 30s).
	MaximumRateLimitDelay time.Duration
	// RemoveOnComplete and RemoveOnFail are the retention policies for jobs
	// whose own options set none (nil: keep all).
	RemoveOnComplete *KeepJobs
	RemoveOnFail     *KeepJobs
	// SkipStalledCheck turns the stalled-job check off for this worker.
	SkipStalledCheck bool
	// Metrics, with MaxDataPoints > 0, records how many jobs complete and
	// fail per minute, as Node's metrics worker option does; Node's
	// Queue.getMetrics and Queue.Metrics read them.
	Metrics MetricsOptions
	// BackoffStrategy computes the retry delay of jobs whose backoff type
	// is not built in ("fixed" and "exponential" always use the built-in
	// strategies), like Node's settings.backoffStrategy: attemptsMade
	// counts the attempts made including the one that just failed, typ is
	// the job's backoff type, err the attempt's error. A result <= 0
	// retries at once; a negative one (Node's -1) fails the job for good.
	// Delays have millisecond resolution. A panic fails the job for good.
	// Without it, such a job fails for good with Node's "Unknown backoff
	// strategy" reason when a retry is due.
	BackoffStrategy func(attemptsMade int, typ string, err error, job *Job) time.Duration
	// OnError, when set, receives errors the worker cannot return from a
	// call: a failed lock renewal, a lost connection, a finish that failed.
	// It is called from the worker's goroutines and must not block.
	OnError func(error)
}

func (o *WorkerOptions) withDefaults() (WorkerOptions, error) {
	w := *o
	if w.Prefix == "" {
		w.Prefix = DefaultPrefix
	}
	if w.Concurrency < 0 {
		return w, invalidf("negative Concurrency %d", w.Concurrency)
	}
	if w.Concurrency == 0 {
		w.Concurrency = DefaultConcurrency
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"LockDuration", &w.LockDuration, DefaultLockDuration},
		{"StalledInterval", &w.StalledInterval, DefaultStalledInterval},
		{"DrainDelay", &w.DrainDelay, DefaultDrainDelay},
		{"MaximumRateLimitDelay", &w.MaximumRateLimitDelay, DefaultMaximumRateLimitDelay},
	} {
		if *d.v < 0 {
			return w, invalidf("negative %s %v", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if w.LockDuration < 4*time.Millisecond {
		return w, invalidf("LockDuration %v below 4ms", w.LockDuration)
	}
	if w.Metrics.MaxDataPoints < 0 {
		return w, invalidf("negative Metrics.MaxDataPoints %d", w.Metrics.MaxDataPoints)
	}
	if w.MaxStalledCount < 0 {
		return w, invalidf("negative MaxStalledCount %d", w.MaxStalledCount)
	}
	if w.MaxStalledCount == 0 {
		w.MaxStalledCount = DefaultMaxStalledCount
	}
	if w.Limiter.Max < 0 || w.Limiter.Duration < 0 {
		return w, invalidf("negative Limiter %+v", w.Limiter)
	}
	if (w.Limiter.Max > 0) != (w.Limiter.Duration > 0) {
		return w, invalidf("Limiter needs both Max and Duration, got %+v", w.Limiter)
	}
	if strings.ContainsAny(w.Name, " \n\r") {
		return w, invalidf("Name %q contains spaces or newlines (not allowed in a client name)", w.Name)
	}
	return w, nil
}
