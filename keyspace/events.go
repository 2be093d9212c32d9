package keyspace

import "context"

// Event names Redis documents for keyspace notifications. Event.Event holds
// one of these, or, for names this package does not know (modules, newer
// servers), the raw name as Redis sent it.
const (
	EventAppend               = "append"
	EventCopyTo               = "copy_to"
	EventDel                  = "del"
	EventExpire               = "expire"
	EventExpired              = "expired"
	EventEvicted              = "evicted"
	EventNew                  = "new"
	EventKeyMiss              = "keymiss"
	EventMoveFrom             = "move_from"
	EventMoveTo               = "move_to"
	EventPersist              = "persist"
	EventRenameFrom           = "rename_from"
	EventRenameTo             = "rename_to"
	EventRestore              = "restore"
	EventSortStore            = "sortstore"
	EventSet                  = "set"
	EventSetRange             = "setrange"
	EventIncrBy               = "incrby"
	EventIncrByFloat          = "incrbyfloat"
	EventLInsert              = "linsert"
	EventLPop                 = "lpop"
	EventLPush                = "lpush"
	EventLRem                 = "lrem"
	EventLSet                 = "lset"
	EventLTrim                = "ltrim"
	EventRPop                 = "rpop"
	EventRPush                = "rpush"
	EventHDel                 = "hdel"
	EventHExpire              = "hexpire"
	EventHIncrBy              = "hincrby"
	EventHIncrByFloat         = "hincrbyfloat"
	EventHPersist             = "hpersist"
	EventHSet                 = "hset"
	EventSAdd                 = "sadd"
	EventSRem                 = "srem"
	EventSPop                 = "spop"
	EventSInterStore          = "sinterstore"
	EventSUnionStore          = "sunionstore"
	EventSDiffStore           = "sdiffstore"
	EventZAdd                 = "zadd"
	EventZIncr                = "zincr"
	EventZRem                 = "zrem"
	EventZRemByRank           = "zrembyrank"
	EventZRemByScore          = "zrembyscore"
	EventZDiffStore           = "zdiffstore"
	EventZInterStore          = "zinterstore"
	EventZUnionStore          = "zunionstore"
	EventXAdd                 = "xadd"
	EventXDel                 = "xdel"
	EventXTrim                = "xtrim"
	EventXSetID               = "xsetid"
	EventXGroupCreate         = "xgroup-create"
	EventXGroupCreateConsumer = "xgroup-createconsumer"
	EventXGroupDelConsumer    = "xgroup-delconsumer"
	EventXGroupDestroy        = "xgroup-destroy"
	EventXGroupSetID          = "xgroup-setid"
	EventOverwritten          = "overwritten"
	EventTypeChanged          = "type_changed"
)

// eventClass maps each documented event name to the flag that makes Redis
// publish it.
var eventClass = map[string]flagSet{
	EventAppend: flagString, EventSet: flagString, EventSetRange: flagString,
	EventIncrBy: flagString, EventIncrByFloat: flagString,

	EventCopyTo: flagGeneric, EventDel: flagGeneric, EventExpire: flagGeneric,
	EventMoveFrom: flagGeneric, EventMoveTo: flagGeneric, EventPersist: flagGeneric,
	EventRenameFrom: flagGeneric, EventRenameTo: flagGeneric, EventRestore: flagGeneric,
	EventSortStore: flagGeneric,

	EventExpired: flagExpired, EventEvicted: flagEvicted, EventNew: flagNew,
	EventKeyMiss: flagMiss, EventOverwritten: flagOverwritten, EventTypeChanged: flagTypeChanged,

	EventLInsert: flagList, EventLPop: flagList, EventLPush: flagList, EventLRem: flagList,
	EventLSet: flagList, EventLTrim: flagList, EventRPop: flagList, EventRPush: flagList,

	EventHDel: flagHash, EventHExpire: flagHash, EventHIncrBy: flagHash,
	EventHIncrByFloat: flagHash, EventHPersist: flagHash, EventHSet: flagHash,

	EventSAdd: flagSet_, EventSRem: flagSet_, EventSPop: flagSet_,
	EventSInterStore: flagSet_, EventSUnionStore: flagSet_, EventSDiffStore: flagSet_,

	EventZAdd: flagZSet, EventZIncr: flagZSet, EventZRem: flagZSet,
	EventZRemByRank: flagZSet, EventZRemByScore: flagZSet, EventZDiffStore: flagZSet,
	EventZInterStore: flagZSet, EventZUnionStore: flagZSet,

	EventXAdd: flagStream, EventXDel: flagStream, EventXTrim: flagStream,
	EventXSetID: flagStream, EventXGroupCreate: flagStream,
	EventXGroupCreateConsumer: flagStream, EventXGroupDelConsumer: flagStream,
	EventXGroupDestroy: flagStream, EventXGroupSetID: flagStream,
}

// KnownEvent reports whether name is one of the event names Redis documents
// (the Event… constants).
func KnownEvent(name string) bool {
	_, ok := eventClass[name]
	return ok
}

// Event is one keyspace notification as delivered to a handler.
//
// Redis pub/sub is at-most-once: an Event that Redis published while the
// subscriber was disconnected is lost for good, and Options.OnGap is called
// once the subscription is back.
type Event struct {
	// DB is the database the key lives in.
	DB int
	// Key is the key the event is about.
	Key string
	// Event is the event name, e.g. EventSet or EventExpired; names this
	// package does not know are kept as Redis sent them (see KnownEvent).
	Event string
	// Node is the address of the server that published the event (in a
	// cluster, the primary that owns Key's slot).
	Node string
	// Channel is the pub/sub channel the event arrived on.
	Channel string

	ctx context.Context
}

// Known reports whether e.Event is a documented Redis event name.
func (e Event) Known() bool { return KnownEvent(e.Event) }

// Context returns the manager's context for handlers: it carries the values
// of the context given to Start, is cancelled when the manager closes, and
// has no long-lived mark (connections a handler holds are checked like any
// other). Never nil.
func (e Event) Context() context.Context {
	if e.ctx == nil {
		return context.Background()
	}
	return e.ctx
}
