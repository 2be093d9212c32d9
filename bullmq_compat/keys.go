package bullmq

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// keys holds the Redis key strings of one queue, identical to Node's.
type keys struct {
	prefix string // "bull"
	name   string // queue name
	base   string // "bull:name:" (job keys are base + id)
	all    []string
}

// Positions of the queue keys in every script's KEYS.
const (
	kWait = iota
	kActive
	kPrioritized
	kDelayed
	kMeta
	kID
	kEvents
	kMarker
	kPC
	kStalled
	kLimiter
	kCompleted
	kFailed
	kStalledCheck
	kPaused
	kRepeat
	kWaitingChildren
	kCount
)

var keyNames = [kCount]string{
	kWait: "wait", kActive: "active", kPrioritized: "prioritized", kDelayed: "delayed",
	kMeta: "meta", kID: "id", kEvents: "events", kMarker: "marker", kPC: "pc",
	kStalled: "stalled", kLimiter: "limiter", kCompleted: "completed", kFailed: "failed",
	kStalledCheck: "stalled-check", kPaused: "paused", kRepeat: "repeat",
	kWaitingChildren: "waiting-children",
}

func newKeys(prefix, name string) (*keys, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if name == "" {
		return nil, invalidf("empty queue name")
	}
	if strings.Contains(name, ":") {
		return nil, invalidf("queue name %q contains ':'", name)
	}
	k := &keys{prefix: prefix, name: name, base: prefix + ":" + name + ":"}
	k.all = make([]string, kCount)
	for i, n := range keyNames {
		k.all[i] = k.base + n
	}
	return k, nil
}

func (k *keys) key(i int) string     { return k.all[i] }
func (k *keys) job(id string) string { return k.base + id }

// clientName is the name Node's getWorkers() lists: <prefix>:<base64(queue)>
// or, for a named worker, <prefix>:<base64(queue)>:w:<name>.
func (k *keys) clientName(worker string) string {
	n := fmt.Sprintf("%s:%s", k.prefix, base64.StdEncoding.EncodeToString([]byte(k.name)))
	if worker != "" {
		n += ":w:" + worker
	}
	return n
}
