package stomp

import "github.com/ferrymq/ferry/protocols/message"

// Subscribed reports whether a PublishLocal of topic would reach any
// subscription (/topic or /queue) of a connected client.
func (s *Server) Subscribed(topic string) bool {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	for _, sub := range s.reg.topics {
		if message.Match(sub.filter, topic) {
			return true
		}
	}
	for _, g := range s.reg.groups {
		if message.Match(g.filter, topic) {
			return true
		}
	}
	return false
}
