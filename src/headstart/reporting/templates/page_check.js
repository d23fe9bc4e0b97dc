window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) broken++;
  }
  var doc = document.documentElement;
  var wide = doc.scrollWidth > doc.clientWidth + 1;
  var el = document.getElementById('page-check');
  el.setAttribute('data-images', imgs.length);
  el.setAttribute('data-broken', broken);
  el.setAttribute('data-overflow', wide ? 1 : 0);
  el.textContent = 'Page check: ' + imgs.length + ' images, ' + broken + ' failed to load'
    + (wide ? '; the page is wider than the window' : '') + '.';
});
