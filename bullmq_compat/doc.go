// Package bullmq runs BullMQ queues and workers in Go, wire-compatible with
// Node's BullMQ 6.7: a Go service can add jobs that Node workers process,
// process jobs that Node producers add, and be watched by Node's
// QueueEvents, on the same Redis keys.
//
// # Layout
//
// A queue named q lives under the keys <prefix>:q:* (prefix "bull" by
// default): the wait list, the active list, the prioritized, delayed,
// completed and failed sorted sets, the meta hash, the events stream, the
// marker sorted set that wakes blocked workers, and one hash per job. This
// package writes exactly what BullMQ 6.7 writes there (fields, scores,
// marker members and stream events), with its own Lua scripts. Those facts
// were taken from BullMQ 6.7.0 itself (the Lua scripts and classes of the
// npm package bullmq@6.7.0, and a Node producer, worker and QueueEvents run
// against Redis); BullMQ's public documentation is at https://docs.bullmq.io.
// For Redis Cluster, put a hash tag in the prefix ("{bull}") or in the
// queue name, identically on the Node side, so that all keys of a queue
// share one slot.
//
// # Producing
//
// NewQueue returns a Queue; Queue.Add and Queue.AddBulk add standard,
// delayed (JobOptions.Delay) and prioritized (JobOptions.Priority) jobs, with
// custom ids following Node's rules (a duplicate id writes nothing). Data is
// encoded with encoding/json; a json.RawMessage is stored as is.
// JobOptions.Deduplication skips adds while a job holds the same
// deduplication id (Node's simple, TTL, extend, replace and
// keepLastIfActive modes). QueueOptions.MaxQueueDepth turns Add into a
// backpressure point that fails with ErrQueueFull. Queue.Pause and
// Queue.Resume affect Node workers too.
//
// # Consuming
//
// NewWorker returns a Worker whose Run fetches jobs atomically into the
// active list under a lock token, renews the locks while handlers run,
// completes or fails jobs with the events Node expects (stack traces in
// Node's shape), retries with fixed or exponential backoff or a custom
// WorkerOptions.BackoffStrategy, promotes due delayed jobs, honours pause,
// the queue-wide rate limit and global concurrency set by Node, runs the
// stalled-job check once per interval (a job whose worker died is run
// again), applies RemoveOnComplete / RemoveOnFail, records metrics, and
// keeps Node job schedulers going (the next iteration is added when a
// scheduler's job is fetched). Handler panics fail the job with the panic
// message and stack. Close drains.
//
// A handler may move its own job, as in Node: Job.MoveToDelayed then
// ErrDelayed, Job.MoveToWaitingChildren then ErrWaitingChildren (children
// added with JobOptions.Parent), Worker.RateLimit then ErrRateLimited.
//
// Flows: FlowProducer adds a parent that waits in waiting-children until
// its children completed, as Node's FlowProducer does, and a Go worker may
// process the children of flows added by Node: finishing a child does the
// parent's bookkeeping (its processed values, its release from
// waiting-children, the failParentOnFailure family of options: fail,
// ignore, continue, remove).
//
// # Connections
//
// A Worker blocks on the queue's marker on a dedicated connection (a
// Client.EphemeralConn, or on a ClusterClient the Conn of the node that
// serves the queue's slot), named so that Node's Queue.getWorkers lists it.
// QueueEvents holds one too, for XREAD BLOCK. These connections are
// acquired with redisleak.WithLongLived and an owner
// ("bullmq:worker:<queue>", "bullmq:events:<queue>"), so a redisleak
// Tracker attached to the client counts them as long-lived instead of
// reporting them; all other commands go through the client's pool, marked
// with the owner only. Handler contexts carry no long-lived mark: a
// connection a handler holds too long is still reported.
//
// # Not implemented
//
// Sandboxed processors; manual job moves outside a handler (promote,
// changeDelay and friends); the queue's meta.version field.
package bullmq
