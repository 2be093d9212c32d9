package bullmq

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
)

// Queue adds jobs to a BullMQ queue and manages it (pause, resume, counts).
// It holds no connection of its own: every command goes through rdb's
// pool. A Queue is safe for concurrent use.
type Queue struct {
	rdb    redis.UniversalClient
	k      *keys
	opts   QueueOptions
	owner  string
	closed atomic.Bool
}

// NewQueue returns a Queue for the queue called name. It validates its
// arguments and does not touch Redis. The name may not be empty or contain
// ':'.
func NewQueue(rdb redis.UniversalClient, name string, opts QueueOptions) (*Queue, error) {
	if rdb == nil {
		return nil, invalidf("nil Redis client")
	}
	if opts.MaxQueueDepth < 0 {
		return nil, invalidf("negative MaxQueueDepth %d", opts.MaxQueueDepth)
	}
	k, err := newKeys(opts.Prefix, name)
	if err != nil {
		return nil, err
	}
	opts.Prefix = k.prefix
	return &Queue{rdb: rdb, k: k, opts: opts, owner: "bullmq:queue:" + name}, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.k.name }

// Key returns the full Redis key of one of the queue's structures, e.g.
// Key("wait") is "bull:<name>:wait" with the default prefix.
func (q *Queue) Key(suffix string) string { return q.k.base + suffix }

func ownerCtx(ctx context.Context, owner string) context.Context {
	if ctx == nil {
		ctx = context.Background()
	}
	return redisleak.WithOwner(ctx, owner)
}

// BulkJob is one job for Queue.AddBulk.
type BulkJob struct {
	Name string
	Data any
	Opts JobOptions
}

// Add adds one job. data is encoded with encoding/json (a json.RawMessage
// must be valid JSON and is stored as is; nil is stored as {} like Node's
// undefined). The job goes to the delayed set when opts.Delay > 0, else to
// the prioritized set when opts.Priority > 0, else to the wait list.
//
// Invalid input (unencodable data, a bad option or job id) is an error
// wrapping ErrInvalidOptions or ErrInvalidJobID, and nothing is written.
// With QueueOptions.MaxQueueDepth set, a full queue gives ErrQueueFull.
// A custom JobID that already exists, or a Deduplication id held by
// another job, writes nothing: the returned Job has the existing job's id
// and Duplicate set.
func (q *Queue) Add(ctx context.Context, name string, data any, opts JobOptions) (*Job, error) {
	jobs, err := q.AddBulk(ctx, []BulkJob{{Name: name, Data: data, Opts: opts}})
	if err != nil {
		return nil, err
	}
	return jobs[0], nil
}

// AddBulk adds jobs atomically, in one script call: either all are added
// (duplicates of existing custom ids excepted) or, on invalid input or a
// full queue, none.
func (q *Queue) AddBulk(ctx context.Context, jobs []BulkJob) ([]*Job, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	if len(jobs) == 0 {
		return nil, nil
	}
	now := time.Now()
	args := make([]any, 0, 3+addArgsPerJob*len(jobs))
	args = append(args, q.k.base, q.opts.MaxQueueDepth, len(jobs))
	out := make([]*Job, len(jobs))
	for i := range jobs {
		var err error
		args, out[i], err = q.appendAddArgs(args, &jobs[i], now, flowLink{})
		if err != nil {
			return nil, bulkErr(len(jobs), i, jobs[i].Name, err)
		}
	}
	res, err := addScript.Run(ownerCtx(ctx, q.owner), q.rdb, q.k.all, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("bullmq: add to %s: %w", q.k.name, err)
	}
	if err := q.addResult(res, out); err != nil {
		return nil, err
	}
	return out, nil
}

// addArgsPerJob is how many script arguments each job of an add takes.
const addArgsPerJob = 14

// flowLink places a job in a flow: its parent, and whether it waits for
// children of its own.
type flowLink struct {
	parentKey, parentData string
	parent                *storedParent // opts.parent of a child
	waitChildren          bool
	// id is a generated id (Node's FlowProducer gives jobs without a
	// jobId a UUID, which it does not store as opts.jobId).
	id string
}

// appendAddArgs validates and encodes one job for addScript.
func (q *Queue) appendAddArgs(args []any, bj *BulkJob, now time.Time, link flowLink) ([]any, *Job, error) {
	if err := bj.Opts.validate(); err != nil {
		return args, nil, err
	}
	if p := bj.Opts.Parent; p != nil {
		if link.parentKey != "" {
			return args, nil, invalidf("Parent is set by the FlowProducer")
		}
		link.parentKey = p.Queue + ":" + p.ID
		link.parentData = parentData(p.ID, p.Queue, &bj.Opts)
		link.parent = &storedParent{ID: p.ID, Queue: p.Queue}
	}
	var data []byte
	if bj.Data == nil {
		data = []byte("{}")
	} else {
		var err error
		if data, err = encodeJSON(bj.Data); err != nil {
			return args, nil, fmt.Errorf("bullmq: data: %w", err)
		}
	}
	ts := now
	if !bj.Opts.Timestamp.IsZero() {
		ts = bj.Opts.Timestamp
	}
	tsMs := ts.UnixMilli()
	opts, err := bj.Opts.encode(tsMs, link.parent)
	if err != nil {
		return args, nil, fmt.Errorf("bullmq: options: %w", err)
	}
	lifo := ""
	if bj.Opts.LIFO {
		lifo = "1"
	}
	deid, dettl, demodes := "", int64(0), ""
	if d := bj.Opts.Deduplication; d != nil {
		deid, dettl = d.ID, d.TTL.Milliseconds()
		for _, m := range []struct {
			on     bool
			letter string
		}{{d.Extend, "e"}, {d.Replace, "r"}, {d.KeepLastIfActive, "k"}} {
			if m.on {
				demodes += m.letter
			}
		}
	}
	waitChildren := ""
	if link.waitChildren {
		waitChildren = "1"
	}
	id := bj.Opts.JobID
	if id == "" {
		id = link.id
	}
	args = append(args, id, bj.Name, string(data), string(opts),
		strconv.FormatInt(tsMs, 10), strconv.FormatInt(bj.Opts.Delay.Milliseconds(), 10),
		strconv.Itoa(bj.Opts.Priority), lifo, deid, dettl,
		link.parentKey, link.parentData, waitChildren, demodes)
	j := &Job{
		Name: bj.Name, Data: json.RawMessage(data), Opts: json.RawMessage(opts),
		Attempts: bj.Opts.Attempts, Priority: bj.Opts.Priority, Delay: bj.Opts.Delay.Truncate(time.Millisecond),
		Timestamp: time.UnixMilli(tsMs),
	}
	j.q, j.rdb, j.owner = q.k, q.rdb, q.owner
	return args, j, nil
}

// parentData is the JSON of a child's `parent` field: the parent's id and
// queue key, and the child's parent-on-failure flag.
func parentData(id, queueKey string, o *JobOptions) string {
	parent := map[string]any{"id": id, "queueKey": queueKey}
	for flag, set := range map[string]bool{
		"fpof": o.FailParentOnFailure, "idof": o.IgnoreDependencyOnFailure,
		"cpof": o.ContinueParentOnFailure, "rdof": o.RemoveDependencyOnFailure,
	} {
		if set {
			parent[flag] = true
		}
	}
	b, _ := json.Marshal(parent)
	return string(b)
}

// Qualified returns the queue's qualified name, "<prefix>:<name>", the
// Queue of a ParentRef.
func (q *Queue) Qualified() string { return q.k.prefix + ":" + q.k.name }

// addResult fills in the ids addScript returned.
func (q *Queue) addResult(res []any, out []*Job) error {
	if len(res) == 1 {
		if code, _ := res[0].(int64); code == 5 {
			return fmt.Errorf("%w: the parent of a job added to %s is missing", ErrJobNotFound, q.k.name)
		}
		return fmt.Errorf("%w: %s has MaxQueueDepth %d", ErrQueueFull, q.k.name, q.opts.MaxQueueDepth)
	}
	if len(res) != 2*len(out) {
		return fmt.Errorf("bullmq: add to %s: unexpected reply %v", q.k.name, res)
	}
	for i, j := range out {
		code, _ := res[2*i].(int64)
		j.ID, _ = res[2*i+1].(string)
		j.Duplicate = code == 1
	}
	return nil
}

// bulkErr names the job an error is about when there are several.
func bulkErr(n, i int, name string, err error) error {
	if n == 1 {
		return err
	}
	return fmt.Errorf("%w (job %d of the bulk, %q)", err, i, name)
}

// Pause pauses the queue for every worker, Node's included: jobs keep
// arriving in wait but none is fetched until Resume.
func (q *Queue) Pause(ctx context.Context) error {
	return q.pause(ctx, "pause")
}

// Resume resumes a paused queue and wakes the workers.
func (q *Queue) Resume(ctx context.Context) error {
	return q.pause(ctx, "resume")
}

func (q *Queue) pause(ctx context.Context, what string) error {
	if q.closed.Load() {
		return ErrClosed
	}
	if err := pauseScript.Run(ownerCtx(ctx, q.owner), q.rdb, q.k.all, q.k.base, what).Err(); err != nil {
		return fmt.Errorf("bullmq: %s %s: %w", what, q.k.name, err)
	}
	return nil
}

// JobCounts are the numbers of jobs in each state of a queue.
type JobCounts struct {
	Waiting, Prioritized, Delayed, Active, Completed, Failed int
	// Paused reports whether the queue is paused.
	Paused bool
}

// Counts returns the job counts, read atomically.
func (q *Queue) Counts(ctx context.Context) (JobCounts, error) {
	var c JobCounts
	if q.closed.Load() {
		return c, ErrClosed
	}
	r, err := countsScript.Run(ownerCtx(ctx, q.owner), q.rdb, q.k.all, q.k.base).Int64Slice()
	if err != nil {
		return c, fmt.Errorf("bullmq: counts of %s: %w", q.k.name, err)
	}
	if len(r) != 7 {
		return c, fmt.Errorf("bullmq: counts of %s: unexpected reply %v", q.k.name, r)
	}
	c = JobCounts{Waiting: int(r[0]), Prioritized: int(r[1]), Delayed: int(r[2]), Active: int(r[3]),
		Completed: int(r[4]), Failed: int(r[5]), Paused: r[6] == 1}
	return c, nil
}

// Metrics are the per-minute counts of finished jobs that workers with
// metrics record (Node's Queue.getMetrics result).
type Metrics struct {
	// Count is the total number of jobs counted; PrevTS (ms) and
	// PrevCount are the time and the count of the last data point.
	Count, PrevTS, PrevCount int64
	// Data holds the jobs per minute, newest first, from the requested
	// range.
	Data []int64
	// Points is how many data points are stored in all.
	Points int64
}

// Metrics reads the metrics of "completed" or "failed" jobs; start and
// end select data points as in LRANGE (0, -1: all), as Node's getMetrics.
func (q *Queue) Metrics(ctx context.Context, typ string, start, end int64) (Metrics, error) {
	var m Metrics
	if typ != "completed" && typ != "failed" {
		return m, invalidf("metrics type %q (want \"completed\" or \"failed\")", typ)
	}
	if q.closed.Load() {
		return m, ErrClosed
	}
	ctx = ownerCtx(ctx, q.owner)
	mk := q.k.base + "metrics:" + typ
	var meta *redis.SliceCmd
	var data *redis.StringSliceCmd
	var n *redis.IntCmd
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		meta = p.HMGet(ctx, mk, "count", "prevTS", "prevCount")
		data = p.LRange(ctx, mk+":data", start, end)
		n = p.LLen(ctx, mk+":data")
		return nil
	})
	if err != nil {
		return m, fmt.Errorf("bullmq: metrics of %s: %w", q.k.name, err)
	}
	v := meta.Val()
	field := func(i int) int64 {
		s, _ := v[i].(string)
		x, _ := strconv.ParseInt(s, 10, 64)
		return x
	}
	m.Count, m.PrevTS, m.PrevCount = field(0), field(1), field(2)
	for _, s := range data.Val() {
		x, _ := strconv.ParseInt(s, 10, 64)
		m.Data = append(m.Data, x)
	}
	m.Points = n.Val()
	return m, nil
}

// GetJob reads a job; it returns an error wrapping ErrJobNotFound when the
// job does not exist.
func (q *Queue) GetJob(ctx context.Context, id string) (*Job, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	h, err := q.rdb.HGetAll(ownerCtx(ctx, q.owner), q.k.job(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("bullmq: get job %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("%w: %s in %s", ErrJobNotFound, id, q.k.name)
	}
	j := jobFromHash(id, h)
	j.q, j.rdb, j.owner = q.k, q.rdb, q.owner
	return j, nil
}

// Close marks the queue closed; later calls return ErrClosed. The Redis
// client is the caller's and stays open. Close is idempotent.
func (q *Queue) Close() error {
	q.closed.Store(true)
	return nil
}
