package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// FlowJob is one job of a flow: a parent that runs only after all its
// Children completed (Node's FlowProducer layout). Queue names the job's
// queue; children may live in other queues (on a Redis Cluster, all of a
// flow's queues must share a hash tag).
type FlowJob struct {
	Name     string
	Queue    string
	Data     any
	Opts     JobOptions
	Children []FlowJob
}

// FlowNode is an added FlowJob: its Job (with its id) and its children.
type FlowNode struct {
	Queue    string
	Job      *Job
	Children []*FlowNode
}

// FlowProducerOptions configure a FlowProducer. The zero value works.
type FlowProducerOptions struct {
	// Prefix of every key (default DefaultPrefix, "bull").
	Prefix string
}

// FlowProducer adds flows, like Node's FlowProducer: a parent job waits in
// waiting-children until its children completed; Go and Node workers both
// release it. It holds no connection of its own and is safe for
// concurrent use.
type FlowProducer struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewFlowProducer returns a FlowProducer; it does not touch Redis.
func NewFlowProducer(rdb redis.UniversalClient, opts FlowProducerOptions) (*FlowProducer, error) {
	if rdb == nil {
		return nil, invalidf("nil Redis client")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &FlowProducer{rdb: rdb, prefix: opts.Prefix}, nil
}

// flowStep is one job of a flow ready to be added.
type flowStep struct {
	q    *Queue
	args []any
	job  *Job
}

// Add adds the whole flow atomically (one MULTI transaction). Jobs without
// a JobID get a random UUID, as in Node, so that children can name their
// parent before it is stored. Invalid input anywhere in the tree is an
// error and nothing is written. Deduplication and MaxQueueDepth do not
// apply to flows.
func (f *FlowProducer) Add(ctx context.Context, flow FlowJob) (*FlowNode, error) {
	var steps []flowStep
	root, err := f.plan(flow, flowLink{}, time.Now(), &steps)
	if err != nil {
		return nil, err
	}
	ctx = ownerCtx(ctx, "bullmq:flow")
	run := func() ([]redis.Cmder, error) {
		return f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, s := range steps {
				p.EvalSha(ctx, addScript.Hash(), s.q.k.all, s.args...)
			}
			return nil
		})
	}
	if err := addScript.Load(ctx, f.rdb).Err(); err != nil {
		return nil, fmt.Errorf("bullmq: flow: load script: %w", err)
	}
	cmds, err := run()
	if err != nil && strings.Contains(err.Error(), "NOSCRIPT") { // flushed in between
		if err = addScript.Load(ctx, f.rdb).Err(); err == nil {
			cmds, err = run()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bullmq: flow: %w", err)
	}
	for i, c := range cmds {
		res, err := c.(*redis.Cmd).Slice()
		if err == nil {
			err = steps[i].q.addResult(res, []*Job{steps[i].job})
		}
		if err != nil {
			return nil, fmt.Errorf("bullmq: flow job %q: %w", steps[i].job.Name, err)
		}
	}
	return root, nil
}

// plan validates fj and its children depth-first, parent before children.
func (f *FlowProducer) plan(fj FlowJob, link flowLink, now time.Time, steps *[]flowStep) (*FlowNode, error) {
	q, err := NewQueue(f.rdb, fj.Queue, QueueOptions{Prefix: f.prefix})
	if err != nil {
		return nil, fmt.Errorf("bullmq: flow job %q: %w", fj.Name, err)
	}
	if fj.Opts.Deduplication != nil {
		return nil, fmt.Errorf("bullmq: flow job %q: %w", fj.Name, invalidf("Deduplication is not supported in flows"))
	}
	id := fj.Opts.JobID
	if id == "" {
		id = newUUID()
		link.id = id
	}
	link.waitChildren = len(fj.Children) > 0
	bj := BulkJob{Name: fj.Name, Data: fj.Data, Opts: fj.Opts}
	args := []any{q.k.base, 0, 1}
	args, job, err := q.appendAddArgs(args, &bj, now, link)
	if err != nil {
		return nil, fmt.Errorf("bullmq: flow job %q: %w", fj.Name, err)
	}
	job.ID = id
	*steps = append(*steps, flowStep{q: q, args: args, job: job})
	node := &FlowNode{Queue: fj.Queue, Job: job}
	queueKey := q.k.prefix + ":" + q.k.name
	for _, c := range fj.Children {
		child, err := f.plan(c, flowLink{parentKey: q.k.job(id), parentData: parentData(id, queueKey, &c.Opts),
			parent: &storedParent{ID: id, Queue: queueKey}}, now, steps)
		if err != nil {
			return nil, err
		}
		node.Children = append(node.Children, child)
	}
	return node, nil
}

// ChildrenValues returns the return values of the job's completed
// children, keyed by child job key (<prefix>:<queue>:<id>), as Node's
// Job.getChildrenValues does.
func (j *Job) ChildrenValues(ctx context.Context) (map[string]json.RawMessage, error) {
	if j.rdb == nil || j.q == nil {
		return nil, errors.New("bullmq: job " + j.ID + " has no queue")
	}
	h, err := j.rdb.HGetAll(ownerCtx(ctx, j.owner), j.q.job(j.ID)+":processed").Result()
	if err != nil {
		return nil, fmt.Errorf("bullmq: children of job %s: %w", j.ID, err)
	}
	out := make(map[string]json.RawMessage, len(h))
	for k, v := range h {
		out[k] = json.RawMessage(v)
	}
	return out, nil
}
