// notifier's service worker: shows each push and hands it to the open pages.
"use strict";
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message;
  try { message = event.data ? event.data.json() : {}; } catch (e) { message = {text: event.data.text()}; }
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({type: "window", includeUncontrolled: true});
    for (const page of pages) page.postMessage(message);
    await self.registration.showNotification(message.title || "notifier", {body: message.body || "", data: message});
  })());
});
