// Package redisleak finds Redis connections that are held too long in
// go-redis pools — and knows which long holds are on purpose.
package redisleak
