// Package httpapi holds the one way the API reads requests and writes
// responses: JSON bodies and RFC 9457 problem details for every error.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/devgpu/devgpu/sdk"
)

// Error is an error with the status and the message meant for the client;
// Err, if set, is logged and never shown.
type Error struct {
	Status int
	Msg    string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Msg, e.Err)
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an Error with a client message.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// maxBody bounds request bodies; the API takes small JSON documents only.
const maxBody = 1 << 20

// Read decodes the JSON body into v, refusing unknown fields so that a
// misspelt setting is an error, not a silent no-op.
func Read(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(http.StatusBadRequest, "request body is not valid JSON for this endpoint: %v", err)
	}
	if dec.More() {
		return Errorf(http.StatusBadRequest, "request body holds more than one JSON document")
	}
	return nil
}

// Write sends v as JSON with the status (nosniff: a browser never takes
// it for another type).
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError sends err as problem details (nosniff, as Write).
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	p := ProblemFor(r, log, err)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// ProblemFor turns err into problem details. An *Error keeps its status and
// message; anything else is an internal error whose text is only logged.
func ProblemFor(r *http.Request, log *slog.Logger, err error) sdk.Problem {
	var he *Error
	switch {
	case errors.As(err, &he):
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client gave up; nobody reads this answer and nothing failed.
		he = &Error{Status: http.StatusRequestTimeout, Msg: "the request was cancelled"}
	default:
		he = &Error{Status: http.StatusInternalServerError, Msg: "internal error; the server log has the details", Err: err}
	}
	if he.Status >= 500 {
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", he.Status, "err", err)
	}
	return sdk.Problem{Title: http.StatusText(he.Status), Status: he.Status, Detail: he.Msg}
}

// Stream writes newline-delimited JSON, flushing every line, for
// responses whose outcome comes after progress updates.
type Stream struct {
	w   http.ResponseWriter
	enc *json.Encoder
}

// NewStream starts a 200 response of JSON lines.
func NewStream(w http.ResponseWriter) *Stream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	return &Stream{w: w, enc: json.NewEncoder(w)}
}

// Send writes one line and flushes it to the client.
func (s *Stream) Send(v any) {
	_ = s.enc.Encode(v)
	_ = http.NewResponseController(s.w).Flush()
}
