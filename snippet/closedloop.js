// Closed Loop browser tracking snippet.
// Served minified (rjsmin, which does not rename identifiers) and gzipped as
// /s.js, so names are short on purpose. ES2017, no dependencies.
// Embed: <script async src="https://HOST/s.js" data-site="SITE_KEY"></script>
// Optional attributes: data-search-params="q,s,search", data-respect-dnt,
// data-consent="required".
// API: closedloop('track', name, props) | ('identify', email, traits) | ('consent', bool)
(function (w, d, n, L) {
  try {
    var old = w.closedloop,
      S = d.currentScript || d.querySelector('script[data-site]'),
      A = (a) => S.getAttribute(a),
      U = new URL(S.src).origin + '/e', // endpoint = the script's own origin
      dnt = n.doNotTrack == 1 || n.globalPrivacyControl == 1 || void 0,
      RK = '_cl_retry', // localStorage retry queue
      Q = [], // events waiting to be sent
      T = 0, // batch timer
      Z = 0, // fetch in flight (one at a time: keepalive bodies share a 64 KB quota)
      cur = '', // URL of the last pageview
      vis = 0, // start of the current visible period (0 = hidden)
      vid, // visitor id; none = nothing is sent or stored
      // G(f): f guarded so nothing ever throws into the host page
      G = (f) => (...a) => {
        try {
          return f(...a)
        } catch (x) {}
      },
      // C(v, k): string capped to k chars
      C = (v, k = 2e3) => String(v).slice(0, k),
      // random UUID v4
      id = () =>
        ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (c) =>
          (c ^ crypto.getRandomValues(new Uint8Array(1))[0] & 15 >> c / 4).toString(16)
        ),
      // localStorage: ls(k) get, ls(k, v) set, ls(k, '') remove
      ls = G((k, v, s = localStorage) => v == null ? s.getItem(k) : s[v ? 'setItem' : 'removeItem'](k, v)),
      // flat props/traits: string (capped), number, boolean values; max 20 keys
      F = (o, r = {}, i = 0) => {
        for (var k in o)
          'string number boolean'.includes(typeof o[k]) && i++ < 20 &&
            (r[k] = o[k].slice ? C(o[k], 500) : o[k]);
        return r
      },
      // queue an event; send after 1 s or at 50 events
      P = (type, f) => {
        Q.push(Object.assign({ id: id(), type, ts: Date.now(), url: C(L.href), title: C(d.title, 300) }, f));
        Q[49] ? B() : (T = T || setTimeout(G(B), 1e3))
      },
      I = (m, t) => P('identify', { email: C(m, 300).trim(), traits: F(t) }),
      // failed events -> retry queue (max 100, oldest dropped)
      R = G((b) => vid && ls(RK, JSON.stringify(JSON.parse(ls(RK) || '[]').concat(b).slice(-100)))),
      // retry queue -> send queue
      X = G(() => {
        Q.unshift(...JSON.parse(ls(RK) || '[]'));
        ls(RK, '');
        B()
      }),
      api = G((c, a, b) =>
          c == 'track'
            ? a && P('custom', { name: C(a, 200), props: F(b) })
            : c == 'identify'
            ? a && I(a, b)
            : c == 'consent' &&
              // consent given: create + store the id, send the queue;
              // refused: drop the queue, delete cookie and storage
              (a ? vid || (N(), B()) : ((Q.length = 0), V('')))
      ),
      on = (t, f, o = d) => o.addEventListener(t, G(f), !0),
      // page hidden / left: engaged time, then send what is queued via sendBeacon
      H = () => {
        E();
        B(1)
      };

    // DNT / GPC respected: no cookie, no storage, no requests
    if (dnt && S.hasAttribute('data-respect-dnt')) return (w.closedloop = () => {});
    w.closedloop = api;

    // set visitor id in cookie + localStorage; V('') deletes both (and the retry queue)
    function V(v) {
      vid = v;
      d.cookie = '_cl_vid=' + v + ';path=/;SameSite=Lax;max-age=' + (v ? 63072000 : 0) + (L.protocol == 'https:' ? ';Secure' : '');
      ls('_cl_vid', v);
      v || ls(RK, '')
    }
    function N() {
      V(id().replace(/-/g, ''))
    }

    // send everything queued in requests of <= 50 events and < 32 KB;
    // h: page is being hidden -> sendBeacon
    function B(h) {
      T = 0; // a pending timer may still fire: harmless
      while (vid && Q[0] && (h || !Z)) {
        var b = Q.splice(0, 50), y;
        while (new Blob([y = JSON.stringify({ site: A('data-site'), visitor: vid, dnt, events: b })]).size > 32e3 && b[1]) Q.unshift(b.pop());
        // a string body is sent as text/plain;charset=UTF-8 by both
        // sendBeacon and fetch: CORS-safelisted, so no preflight
        h && n.sendBeacon
          ? n.sendBeacon(U, y) || R(b)
          : (Z = fetch(U, { method: 'POST', body: y, keepalive: !0, credentials: 'omit' })
              .then((r) => (r.status > 499 || r.status == 429 ? R(b) : r.ok && X()))
              .catch(() => R(b))
              .then(G(() => B(Z = 0))))
      }
    }

    // engaged time: visible seconds since the page became visible (or since
    // the last pageview), sent when >= 1
    function E() {
      var t = Date.now(), s = vis && Math.round((t - vis) / 1e3);
      vis = d.hidden ? 0 : t;
      s && P('engage', { seconds: s, url: C(cur) })
    }

    // pageview (+ search) when the URL changed
    var pv = G(() => {
      var h = L.href, q = new URL(h).searchParams;
      if (h != cur) {
        E();
        P('pageview', { referrer: C(cur || d.referrer) });
        cur = h;
        (A('data-search-params') || 'q,s,search').split(',').some(
          (p) => (p = (q.get(p.trim()) || '').trim()) && !P('search', { query: C(p, 500) })
        )
      }
    });

    // outbound / download links; button 0 = left (click), 1 = middle (auxclick)
    function K(e) {
      var a = e.target.closest('a[href]'), t;
      if (a && e.button < 2 && /^http/.test(a.href)) {
        t = { target: C(a.href) };
        a.hasAttribute('download') ||
        /\.((doc|xls|ppt)x?|pdf|zip|csv|txt|rtf|dmg|exe|msi|t?gz|7z|rar|mp[34]|mov|avi|epub|key|pages|numbers|od[tsp])$/i.test(a.pathname)
          ? P('download', t)
          : a.host != L.host && P('outbound', t)
      }
    }

    vid = (d.cookie.match(/_cl_vid=([\w-]{16,64})/) || [])[1] || ls('_cl_vid');
    // an existing id means consent was given earlier (nothing is stored before)
    vid ? V(vid) : A('data-consent') != 'required' && N();
    X();
    pv();

    ['pushState', 'replaceState'].forEach((k, o) => {
      o = history[k];
      history[k] = function () {
        o.apply(this, arguments);
        pv()
      }
    });
    on('popstate', pv, w);
    on('click', K);
    on('auxclick', K);

    // <form data-closedloop-identify>: reads only the email and the first_name,
    // last_name, company inputs (never passwords); sent at once
    on('submit', (e) => {
      var f = e.target, m,
        g = (s) => {
          var i = f.querySelector(s);
          return (i && i.type != 'password' && i.value.trim()) || void 0
        };
      if (f.hasAttribute('data-closedloop-identify') &&
          (m = g('input[type=email]') || g('input[name*=email i],input[id*=email i]'))) {
        // traits only from inputs named first_name/firstname, last_name/lastname, company
        I(m, {
          first_name: g('[name=first_name],[name=firstname]'),
          last_name: g('[name=last_name],[name=lastname]'),
          company: g('[name=company]')
        });
        B(1)
      }
    });

    on('visibilitychange', H);
    on('pagehide', H, w);

    // replay calls queued by the stub before the script loaded
    (old && old.q || []).forEach((a) => api(...a));
  } catch (e) {}
})(window, document, navigator, location);
