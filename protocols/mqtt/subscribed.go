package mqtt

// Subscribed reports whether a PublishLocal of topic would reach a client
// that is connected now. A persistent session that is away does not count:
// mochi resends what it queued for a session in an order of its own (its
// inflight store sorts by creation time in whole seconds, so commands queued
// within one second come back shuffled) and keeps it in memory only, so the
// downstream lane holds a command until a subscriber is connected (or its
// TTL ends) instead of handing it over early.
func (s *Server) Subscribed(topic string) bool {
	subs := s.ms.Topics.Subscribers(topic)
	if len(subs.InlineSubscriptions) > 0 {
		return true
	}
	for id := range subs.Subscriptions {
		if cl, ok := s.ms.Clients.Get(id); ok && !cl.Closed() {
			return true
		}
	}
	for _, group := range subs.Shared {
		for id := range group {
			if cl, ok := s.ms.Clients.Get(id); ok && !cl.Closed() {
				return true
			}
		}
	}
	return false
}
