package sse

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestEncodeEvent(t *testing.T) {
	tests := []struct {
		name, id, typ, data, want string
	}{
		{"plain", "1-0", "", "hello", "id: 1-0\ndata: hello\n\n"},
		{"typed", "1-1", "greet", "hi", "id: 1-1\nevent: greet\ndata: hi\n\n"},
		{"empty data still dispatches", "2-0", "", "", "id: 2-0\ndata: \n\n"},
		{"LF", "3-0", "", "a\nb", "id: 3-0\ndata: a\ndata: b\n\n"},
		{"CRLF", "3-1", "", "a\r\nb", "id: 3-1\ndata: a\ndata: b\n\n"},
		{"lone CR", "3-2", "", "a\rb", "id: 3-2\ndata: a\ndata: b\n\n"},
		{"trailing LF", "3-3", "", "a\n", "id: 3-3\ndata: a\ndata: \n\n"},
		{"injection attempt", "4-0", "", "x\n\nid: 9-9\nevent: evil\ndata: y", "id: 4-0\ndata: x\ndata: \ndata: id: 9-9\ndata: event: evil\ndata: data: y\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(encodeEvent(nil, tt.id, tt.typ, tt.data))
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			// Parsed back as a client does, the data is intact (line ends
			// normalised to LF).
			ch := make(chan msg, 1)
			readStream(strings.NewReader(got), ch)
			m := <-ch
			wantData := strings.ReplaceAll(strings.ReplaceAll(tt.data, "\r\n", "\n"), "\r", "\n")
			if m.ID != tt.id || m.Event != tt.typ || m.Data != wantData {
				t.Fatalf("parsed %+v, want id %q event %q data %q", m, tt.id, tt.typ, wantData)
			}
		})
	}
}

func TestEncodeComment(t *testing.T) {
	if got := string(encodeComment(nil, "a\nb\r\nc\x00")); got != ": a\n: b\n: c\n\n" {
		t.Fatalf("got %q", got)
	}
}

func TestParseID(t *testing.T) {
	tests := []struct {
		in string
		ok bool
		id streamID
	}{
		{"0-0", true, streamID{}},
		{"1700000000000-12", true, streamID{1700000000000, 12}},
		{"18446744073709551615-18446744073709551615", true, streamID{^uint64(0), ^uint64(0)}},
		{"", false, streamID{}},
		{"1", false, streamID{}},
		{"1-", false, streamID{}},
		{"-1", false, streamID{}},
		{"a-1", false, streamID{}},
		{"1-b", false, streamID{}},
		{"+1-1", false, streamID{}},
		{"01-1", false, streamID{}},
		{"1-01", false, streamID{}},
		{"1-1-1", false, streamID{}},
		{"18446744073709551616-0", false, streamID{}},
		{"1-0\n", false, streamID{}},
	}
	for _, tt := range tests {
		id, ok := parseID(tt.in)
		if ok != tt.ok || id != tt.id {
			t.Errorf("parseID(%q) = %v, %v; want %v, %v", tt.in, id, ok, tt.id, tt.ok)
		}
		if ok && id.String() != tt.in {
			t.Errorf("String() = %q, want %q", id.String(), tt.in)
		}
	}
	a, b := streamID{1, 5}, streamID{2, 0}
	if !a.less(b) || b.less(a) || a.less(a) {
		t.Error("less is wrong")
	}
	if a.next() != (streamID{1, 6}) || (streamID{1, ^uint64(0)}).next() != (streamID{2, 0}) {
		t.Error("next is wrong")
	}
}

func TestCheckEvent(t *testing.T) {
	tests := []struct {
		name  string
		topic string
		e     Event
		want  error
	}{
		{"ok", "t", Event{Event: "x", Data: "a\nb"}, nil},
		{"id set", "t", Event{ID: "1-0"}, ErrInvalidEvent},
		{"type with LF", "t", Event{Event: "a\nb"}, ErrInvalidEvent},
		{"type with CR", "t", Event{Event: "a\rb"}, ErrInvalidEvent},
		{"type with NUL", "t", Event{Event: "a\x00"}, ErrInvalidEvent},
		{"data with NUL", "t", Event{Data: "a\x00"}, ErrInvalidEvent},
		{"reserved type", "t", Event{Event: "reset"}, ErrInvalidEvent},
		{"reserved type heartbeat", "t", Event{Event: "heartbeat"}, ErrInvalidEvent},
		// Browsers fire onerror/onopen for these on an open connection.
		{"type error", "t", Event{Event: "error"}, ErrInvalidEvent},
		{"type open", "t", Event{Event: "open"}, ErrInvalidEvent},
		{"type message", "t", Event{Event: "message"}, nil},
		{"type Error", "t", Event{Event: "Error"}, nil},
		{"empty topic", "", Event{}, ErrInvalidTopic},
		{"topic with LF", "a\nb", Event{}, ErrInvalidTopic},
		{"long topic", strings.Repeat("x", 257), Event{}, ErrInvalidTopic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkTopic(tt.topic)
			if err == nil {
				err = checkEvent(tt.e)
			}
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseMessage(t *testing.T) {
	f, ok := parseMessage("5-1\nnews\ntyp\nline1\nline2")
	if !ok || f.id != (streamID{5, 1}) || f.topic != "news" || string(f.buf) != "id: 5-1\nevent: typ\ndata: line1\ndata: line2\n\n" {
		t.Fatalf("got %+v %q %v", f, f.buf, ok)
	}
	for _, bad := range []string{"", "5-1", "5-1\nnews", "5-1\nnews\ntyp", "x\nnews\ntyp\ndata"} {
		if _, ok := parseMessage(bad); ok {
			t.Errorf("parseMessage(%q) accepted", bad)
		}
	}
}

// TestPublishRefusesConnectionEventTypes: "error" and "open" would reach a
// browser's onerror/onopen on an open connection; Publish refuses them and
// says why.
func TestPublishRefusesConnectionEventTypes(t *testing.T) {
	m, _ := startManager(t, redisClient(t), Options{})
	for _, typ := range []string{"error", "open"} {
		_, err := m.Publish(context.Background(), "t", Event{Event: typ, Data: "x"})
		if !errors.Is(err, ErrInvalidEvent) || !strings.Contains(err.Error(), "EventSource") {
			t.Errorf("Publish with event type %q: %v, want ErrInvalidEvent explaining EventSource", typ, err)
		}
	}
}
